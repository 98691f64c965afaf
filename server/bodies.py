"""Bytes between HTTP bodies and data files, in bounded memory: receiving a
request body (hashed as it comes, spilled to the data file past the committed
length once it passes 1 MiB) and streaming an object snapshot out.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from functools import partial

import trio

from server.datafiles import PendingWrite, read_ahead_at
from server.errors import EntityTooLarge
from server.records import BodyDigest, BodyHasher, KiB, MiB, ObjectInfo

SPILL_SIZE = 1 * MiB  # body bytes held in memory before they go to the data file
INLINE_HASH_LIMIT = 64 * KiB  # a larger remainder is hashed (and written) in a worker thread
MAX_PIECE_CHUNKS = 512  # chunks in one pwritev (Linux takes up to IOV_MAX = 1024)
AHEAD = 3  # pieces of a body queued for a worker thread, at most (each ~SPILL_SIZE)


async def receive_body(
    body: AsyncIterable[bytes],
    hasher: BodyHasher,
    pending: PendingWrite,
    check_body: Callable[[BodyDigest], None],
    *,
    max_size: int,
) -> bytes:
    """Read and hash the whole body, then let ``check_body`` judge its digest.

    Up to SPILL_SIZE stays in memory; beyond that it goes to ``pending`` (past
    the committed length, invisible) in ~SPILL_SIZE writes, each hashed and
    written in worker threads while the next is received (``_spill``), the
    last bytes too.  Returns the bytes still to be written by the commit (those
    of a small body).  On any failure
    -- the body iterator raising (client gone), ``EntityTooLarge``,
    ``check_body`` refusing, cancellation -- the data file is put back before
    the exception propagates.
    """
    hash_elsewhere = getattr(body, "hash_elsewhere", None)  # a Payload: its SHA-256 goes with our hashing
    if hash_elsewhere is not None:
        hasher.also = hash_elsewhere()
    take_whole = getattr(body, "take_whole", None)  # a Payload: the whole body if it is here already
    try:
        whole = take_whole() if take_whole is not None else None
        if whole is not None:
            if len(whole) > max_size:
                raise EntityTooLarge(MaxSizeAllowed=str(max_size))
            chunks = [whole] if whole else []
        else:
            chunks = await _receive_small(body.__aiter__(), hasher, pending, max_size)
        if sum(map(len, chunks)) > INLINE_HASH_LIMIT:
            await trio.to_thread.run_sync(_hash_and_write, hasher, pending, chunks)
            chunks = []
        tail = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        hasher.update(tail)
        check_body(hasher.digest())
        return tail
    except BaseException:
        if pending.touched:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pending.discard)
        raise


async def _receive_small(stream: AsyncIterator[bytes], hasher: BodyHasher, pending: PendingWrite, max_size: int) -> list[bytes]:
    """The body's chunks while they fit in SPILL_SIZE; past it, all of it goes to ``pending``
    (``_spill``) and nothing is returned."""
    chunks: list[bytes] = []
    buffered = 0
    async for chunk in stream:
        if not chunk:
            continue
        buffered += len(chunk)
        if buffered > max_size:
            raise EntityTooLarge(MaxSizeAllowed=str(max_size))
        chunks.append(chunk)
        if buffered >= SPILL_SIZE:
            await _spill(stream, chunks, hasher, pending, buffered, max_size)
            return []
    return chunks


async def _spill(
    stream: AsyncIterator[bytes], first: list[bytes], hasher: BodyHasher, pending: PendingWrite, total: int,
    max_size: int,
) -> None:  # fmt: skip
    """The rest of a large body, in ~SPILL_SIZE pieces (lists of the chunks as
    received: never joined, written with one pwritev): while pieces arrive, the
    ones before are hashed and written by worker threads (``_Lane``); returns
    once all of it, the last short piece too, is hashed and in the file (the
    lanes take it: no thread hop of its own).  At most AHEAD pieces wait for a
    lane, so memory stays bounded.

    A body whose MD5 is computed (a new object's ETag) gets two lanes, one for
    the MD5 and one for the rest (CRCs, the write): MD5 runs at ~600 MB/s here,
    about as long as the rest together; in turn instead of at once they would
    halve the rate.  Otherwise one lane does it all.  Joining a piece's chunks
    would cost a copy and, past malloc's mmap threshold, fresh pages each time."""

    def md5(piece: list[bytes]) -> None:
        for chunk in piece:
            hasher.update_md5(chunk)

    def write(piece: list[bytes]) -> None:
        for chunk in piece:
            hasher.update_others(chunk)
        pending.write_many(piece)

    lanes = [_Lane(work) for work in ((md5, write) if hasher.computes_md5 else (write,))]
    chunks: list[bytes] = []  # the piece being received
    try:
        async with trio.open_nursery() as nursery:
            threads = trio.CapacityLimiter(len(lanes))  # the body's own: never waits for the default threads
            for lane in lanes:
                nursery.start_soon(partial(trio.to_thread.run_sync, lane.run, limiter=threads))
            try:
                for lane in lanes:
                    await lane.put(first)
                buffered = 0
                async for chunk in stream:
                    if not chunk:
                        continue
                    buffered += len(chunk)
                    total += len(chunk)
                    if total > max_size:
                        raise EntityTooLarge(MaxSizeAllowed=str(max_size))
                    chunks.append(chunk)
                    if buffered >= SPILL_SIZE or len(chunks) >= MAX_PIECE_CHUNKS:
                        for lane in lanes:
                            await lane.put(chunks)
                        chunks = []
                        buffered = 0
                if chunks:
                    for lane in lanes:
                        await lane.put(chunks)
            finally:
                for lane in lanes:
                    lane.end()  # the thread finishes what is queued, then returns
    except BaseExceptionGroup as group:  # raise the failure as is (the threads themselves never raise)
        raise _first_leaf(group) from None
    for lane in lanes:
        lane.raise_failure()


class _Lane:
    """A worker thread that runs ``work`` on a large body's pieces, in order, as they are queued.

    Why not a ``trio.to_thread`` call per piece: each call wakes a sleeping thread,
    and on a busy machine that wake-up (a core, then the GIL) took longer than the
    work; the body's receiving waited for it (measured: a 64 MiB body's receiving
    stalled ~40-100 ms for ~25 ms of work).  This thread goes on while pieces are
    queued, and the event loop waits only when AHEAD pieces are (woken by the thread
    through ``run_sync_soon``).  The first failure is kept: later pieces are skipped,
    ``put`` raises it, and so does ``raise_failure`` once the thread is done.
    """

    def __init__(self, work: Callable[[list[bytes]], None]) -> None:
        self._work = work
        self._pieces: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._queued = 0  # pieces put and not yet done with
        self._room: trio.Event | None = None  # set when a piece is done, if the event loop waits for one
        self._failure: BaseException | None = None

    def run(self) -> None:
        """The thread: every queued piece, until ``end``."""
        while (piece := self._pieces.get()) is not None:
            if self._failure is None:
                try:
                    self._work(piece)
                except BaseException as exc:
                    self._failure = exc
            with self._lock:
                self._queued -= 1
                room, self._room = self._room, None
            if room is not None:
                self._token.run_sync_soon(room.set)

    async def put(self, piece: list[bytes]) -> None:
        """Queue ``piece`` (after waiting while AHEAD are queued)."""
        while True:
            self.raise_failure()
            with self._lock:
                if self._queued < AHEAD:
                    self._queued += 1
                    break
                room = self._room = trio.Event()
            await room.wait()
        self._pieces.put(piece)

    def end(self) -> None:
        self._pieces.put(None)

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _hash_and_write(hasher: BodyHasher, pending: PendingWrite, chunks: list[bytes]) -> None:
    for chunk in chunks:
        hasher.update(chunk)
    pending.write_many(chunks)


class ObjectReader:
    """An open snapshot of one object: ``info`` and the bytes it describes, even
    if the object is appended to, replaced or deleted while it is read (the
    data file is open; appends only add past ``info.size``)."""

    def __init__(self, info: ObjectInfo, fd: int) -> None:
        self.info = info
        self._fd = fd

    def __repr__(self) -> str:
        return f"ObjectReader(bucket={self.info.bucket!r}, key={self.info.key!r}, size={self.info.size})"

    async def stream(self, start: int = 0, end: int | None = None, chunk: int = MiB) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the snapshot (end defaults to, and is capped at, its size)."""
        end = self.info.size if end is None else min(end, self.info.size)
        if start < 0 or start > end or chunk <= 0:
            raise ValueError(f"bad range [{start}, {end}) of {self.info.size} bytes (chunk {chunk})")
        position = start
        while position < end:
            length = min(chunk, end - position)
            data = await trio.to_thread.run_sync(read_ahead_at, self._fd, position, length, end)
            position += length
            yield data
