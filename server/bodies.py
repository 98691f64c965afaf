"""Bytes between HTTP bodies and data files, in bounded memory: receiving a
request body (hashed as it comes, spilled to the data file past the committed
length once it passes 1 MiB) and streaming an object snapshot out.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable

import trio

from server.datafiles import PendingWrite, read_at
from server.errors import EntityTooLarge
from server.records import BodyDigest, BodyHasher, KiB, MiB, ObjectInfo

SPILL_SIZE = 1 * MiB  # body bytes held in memory before they go to the data file
INLINE_HASH_LIMIT = 64 * KiB  # a larger remainder is hashed (and written) in a worker thread
MAX_PIECE_CHUNKS = 512  # chunks in one pwritev (Linux takes up to IOV_MAX = 1024)


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
    written in worker threads while the next is received (``_spill``).
    Returns the last bytes, still to be written by the commit.  On any failure
    -- the body iterator raising (client gone), ``EntityTooLarge``,
    ``check_body`` refusing, cancellation -- the data file is put back before
    the exception propagates.
    """
    hash_elsewhere = getattr(body, "hash_elsewhere", None)  # a Payload: its SHA-256 goes with our hashing
    if hash_elsewhere is not None:
        hasher.also = hash_elsewhere()
    try:
        chunks: list[bytes] = []
        buffered = 0
        stream = body.__aiter__()
        async for chunk in stream:
            if not chunk:
                continue
            buffered += len(chunk)
            if buffered > max_size:
                raise EntityTooLarge(MaxSizeAllowed=str(max_size))
            chunks.append(chunk)
            if buffered >= SPILL_SIZE:
                chunks = await _spill(stream, chunks, hasher, pending, buffered, max_size)
                break
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


async def _spill(
    stream: AsyncIterator[bytes], first: list[bytes], hasher: BodyHasher, pending: PendingWrite, total: int,
    max_size: int,
) -> list[bytes]:  # fmt: skip
    """The rest of a large body, in ~SPILL_SIZE pieces (lists of the chunks as
    received: never joined, written with one pwritev): while one piece arrives,
    the ones before are hashed and written in worker threads; returns the chunks
    after the last full piece.  A piece is handed over only once the workers are
    done with the one before (unbuffered channels): at most two are in memory,
    and every byte before the last full piece handed over is in the file.

    A body whose MD5 is computed (a new object's ETag) gets two workers, one for
    the MD5 and one for the rest (CRCs, the write): MD5 runs at ~600 MB/s here,
    about as long as the rest together; in turn instead of at once they would
    halve the rate.  Otherwise one worker does it all (one thread hop a piece).
    Joining a piece's chunks would cost a copy and, past malloc's mmap
    threshold, fresh pages each time."""

    def md5(piece: list[bytes]) -> None:
        for chunk in piece:
            hasher.update_md5(chunk)

    def write(piece: list[bytes]) -> None:
        for chunk in piece:
            hasher.update_others(chunk)
        pending.write_many(piece)

    async def worker(pieces: trio.MemoryReceiveChannel[list[bytes]], work: Callable[[list[bytes]], None]) -> None:
        async with pieces:
            async for piece in pieces:
                await trio.to_thread.run_sync(work, piece)

    chunks: list[bytes] = []
    try:
        async with trio.open_nursery() as nursery:
            lanes = []
            for work in (md5, write) if hasher.computes_md5 else (write,):
                send, receive = trio.open_memory_channel[list[bytes]](0)
                nursery.start_soon(worker, receive, work)
                lanes.append(send)
            try:
                for lane in lanes:
                    await lane.send(first)
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
                            await lane.send(chunks)
                        chunks = []
                        buffered = 0
            finally:
                for lane in lanes:
                    lane.close()
    except BaseExceptionGroup as group:  # one task failed (the others were cancelled): raise its error as is
        raise _first_leaf(group) from None
    return chunks


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

    async def stream(self, start: int = 0, end: int | None = None, chunk: int = 256 * KiB) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the snapshot (end defaults to, and is capped at, its size)."""
        end = self.info.size if end is None else min(end, self.info.size)
        if start < 0 or start > end or chunk <= 0:
            raise ValueError(f"bad range [{start}, {end}) of {self.info.size} bytes (chunk {chunk})")
        position = start
        while position < end:
            length = min(chunk, end - position)
            data = await trio.to_thread.run_sync(read_at, self._fd, position, length)
            position += length
            yield data
