"""Chunks of lines in, batches (one future append each) out.

Per stream, a batch is flushed when it reaches ``max_bytes`` or when its first
byte has waited ``max_wait``; a batch never spans two files (``generation``) or
a gap, because the checkpoint describes it as one file range [f0, f1).

``BatchRules`` is the pure core (time is passed in, no trio); ``run_batcher`` is
the thin trio shell that feeds it from a channel and sleeps until the next
deadline.  When its input ends it flushes everything and closes its output:
shutdown flows downstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
