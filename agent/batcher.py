"""Chunks of lines in, batches (one future append each) out.

Per stream, a batch is flushed when it reaches ``max_bytes`` or when its first
byte has waited ``max_wait``; a batch never spans two files (``generation``) or
a gap, because the checkpoint describes it as one file range [f0, f1).

``BatchRules`` is the pure core (time is passed in, no trio); ``run_batcher`` is
the thin trio shell that feeds it from a channel and sleeps until the next
deadline.  When its input ends it flushes everything and closes its output:
shutdown flows downstream.

``ChunkHandover`` is what the agent uses instead of that shell: the send end
of a chunk channel without the channel, handing each chunk on at once as a
one-chunk batch (the shipper's lane joins contiguous batches into one
append anyway, and a stream waits for its turn longer than any linger).  A
chunk through two channels and the batcher's task cost ~4 task switches and
a timer: with a thousand streams that was a tenth of the agent's event loop.
Closing its last clone ends the input, as closing a channel would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import structlog
import trio

from agent.fingerprint import FileIdentity

log = structlog.get_logger()


@dataclass(frozen=True)
class Chunk:
    """Bytes a tailer read: ``data`` is file bytes [offset, offset + len(data)) of ``identity``."""

    stream: str
    generation: int  # changes whenever the stream moves to another file or restarts one (truncation)
    identity: FileIdentity
    offset: int
    data: bytes

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass(frozen=True)
class Batch:
    """One future append: file bytes [offset, end) of ``identity``, in ``parts``."""

    stream: str
    generation: int
    identity: FileIdentity  # the newest (longest-prefix) identity seen for these bytes
    offset: int
    parts: tuple[bytes, ...]
    size: int
    started: float  # when its first byte arrived

    @property
    def end(self) -> int:
        return self.offset + self.size

    def body(self) -> bytes:
        """The bytes to send (no copy when the batch is one chunk, the busy-file case)."""
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


def joined(batches: tuple[Batch, ...]) -> bytes:
    """The bytes of consecutive batches, one append's (no copy for one batch)."""
    return batches[0].body() if len(batches) == 1 else b"".join(b.body() for b in batches)


@dataclass
class _Pending:
    first: Chunk
    started: float
    identity: FileIdentity
    parts: list[bytes] = field(default_factory=list)
    size: int = 0

    @property
    def end(self) -> int:
        return self.first.offset + self.size

    def close(self) -> Batch:
        c = self.first
        return Batch(c.stream, c.generation, self.identity, c.offset, tuple(self.parts), self.size, self.started)


class BatchRules:
    """When to flush, per stream.  Pure: ``now`` is an argument."""

    def __init__(self, max_bytes: int, max_wait: float) -> None:
        if max_bytes < 1 or max_wait < 0:
            raise ValueError("max_bytes must be >= 1 and max_wait >= 0")
        self.max_bytes = max_bytes
        self.max_wait = max_wait
        # Insertion order is start order (``now`` never goes back), so the first
        # pending batch is always the next to come due.
        self._pending: dict[str, _Pending] = {}

    @property
    def pending_bytes(self) -> int:
        return sum(p.size for p in self._pending.values())

    def add(self, chunk: Chunk, now: float) -> list[Batch]:
        """Take a chunk; return the batches that are complete because of it, oldest first."""
        if not chunk.data:
            return []
        out: list[Batch] = []
        pending = self._pending.get(chunk.stream)
        if pending is not None and (
            pending.first.generation != chunk.generation
            or pending.end != chunk.offset
            or pending.size + len(chunk.data) > self.max_bytes
        ):
            out.append(self._close(chunk.stream))
            pending = None
        if pending is None:
            pending = self._pending[chunk.stream] = _Pending(chunk, now, chunk.identity)
        pending.parts.append(chunk.data)
        pending.size += len(chunk.data)
        pending.identity = chunk.identity
        if pending.size >= self.max_bytes:
            out.append(self._close(chunk.stream))
        return out

    def next_deadline(self) -> float:
        """When the oldest pending batch comes due (``inf`` when nothing is pending)."""
        for pending in self._pending.values():
            return pending.started + self.max_wait
        return math.inf

    def due(self, now: float) -> list[Batch]:
        """Batches whose first byte has waited ``max_wait`` by ``now``."""
        out = []
        while self._pending and self.next_deadline() <= now:
            out.append(self._close(next(iter(self._pending))))
        return out

    def flush(self, stream: str) -> list[Batch]:
        """The stream's pending batch now (its file ended)."""
        return [self._close(stream)] if stream in self._pending else []

    def flush_all(self) -> list[Batch]:
        """Everything pending, oldest first (the input ended)."""
        return [self._close(stream) for stream in list(self._pending)]

    def _close(self, stream: str) -> Batch:
        return self._pending.pop(stream).close()

    def __repr__(self) -> str:
        return f"<BatchRules max_bytes={self.max_bytes} max_wait={self.max_wait} pending={len(self._pending)}>"


async def run_batcher(
    chunks: trio.MemoryReceiveChannel[Chunk],
    batches: trio.MemorySendChannel[Batch],
    rules: BatchRules,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Feed ``rules`` from ``chunks`` until it ends, sending batches as they complete."""
    async with chunks, batches:
        task_status.started()
        while True:
            ready: list[Batch] = []
            with trio.move_on_at(rules.next_deadline()):
                try:
                    chunk = await chunks.receive()
                except trio.EndOfChannel:
                    break
                ready = rules.add(chunk, trio.current_time())
            ready += rules.due(trio.current_time())
            for batch in ready:
                await batches.send(batch)
        remaining = rules.flush_all()
        log.debug("batcher_drained", batches=len(remaining))
        for batch in remaining:
            await batches.send(batch)


class _Handovers:
    """What the clones of one ``ChunkHandover`` share: where batches go, and how many are open."""

    __slots__ = ("deliver", "ended", "open")

    def __init__(self, deliver: Callable[[Batch], None], ended: Callable[[], None]) -> None:
        self.deliver = deliver
        self.ended = ended
        self.open = 0


class ChunkHandover:
    """A chunk channel's send end whose ``send`` calls ``deliver`` with the chunk as a batch, inline.

    ``clone``, ``close``/``aclose`` and ``async with`` behave as a
    ``trio.MemorySendChannel``'s do; once every clone is closed, ``ended`` is
    called (the consumer's end of input).  ``deliver`` must not block."""

    def __init__(self, deliver: Callable[[Batch], None], ended: Callable[[], None],
                 *, _shared: _Handovers | None = None) -> None:
        self._shared = _shared if _shared is not None else _Handovers(deliver, ended)
        self._shared.open += 1
        self._closed = False

    async def send(self, chunk: Chunk) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this chunk handover is closed")
        if chunk.data:
            batch = Batch(chunk.stream, chunk.generation, chunk.identity, chunk.offset, (chunk.data,), len(chunk.data),
                          trio.current_time())
            self._shared.deliver(batch)

    def clone(self) -> ChunkHandover:
        if self._closed:
            raise trio.ClosedResourceError("this chunk handover is closed")
        return ChunkHandover(self._shared.deliver, self._shared.ended, _shared=self._shared)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shared.open -= 1
        if self._shared.open == 0:
            self._shared.ended()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> ChunkHandover:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ChunkHandover open={self._shared.open} closed={self._closed}>"
