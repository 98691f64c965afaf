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
    the committed length, invisible) in ~SPILL_SIZE writes, hashed in the same
    worker-thread hop.  Returns the last bytes, still to be written by the
    commit.  On any failure -- the body iterator raising (client gone),
    ``EntityTooLarge``, ``check_body`` refusing, cancellation -- the data file
    is put back before the exception propagates.
    """
    try:
        chunks: list[bytes] = []
        buffered = total = 0
        async for chunk in body:
            if not chunk:
                continue
            total += len(chunk)
            if total > max_size:
                raise EntityTooLarge(MaxSizeAllowed=str(max_size))
            chunks.append(chunk)
            buffered += len(chunk)
            if buffered >= SPILL_SIZE:
                await trio.to_thread.run_sync(_hash_and_write, hasher, pending, b"".join(chunks))
                chunks.clear()
                buffered = 0
        tail = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(tail) > INLINE_HASH_LIMIT:
            await trio.to_thread.run_sync(_hash_and_write, hasher, pending, tail)
            tail = b""
        else:
            hasher.update(tail)
        check_body(hasher.digest())
        return tail
    except BaseException:
        if pending.touched:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pending.discard)
        raise


def _hash_and_write(hasher: BodyHasher, pending: PendingWrite, data: bytes) -> None:
    hasher.update(data)
    pending.write(data)


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
