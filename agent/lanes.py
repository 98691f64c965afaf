"""One stream as the shipper sees it: where it goes (``Route``) and what waits to go (``Lane``).

No I/O and no trio here: a lane is a queue of batches plus the stream's
durable state (``StreamState``) and the few facts about its current object
that the roll-over rules need.  The shipper moves lanes through their turns.

A lane refuses a batch that does not continue the previous one of the same
generation (same file, no gap, no overlap): that would be a bug upstream,
and shipping it would break the exact copy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property

from agent.batcher import Batch
from agent.checkpoint import StreamState
from agent.config import InputConfig
from agent.errors import StreamError
from agent.router import KeyFields
from sink.append import ObjectWriter
from sink.compress import Codec, GzipMembers, Identity


@dataclass(frozen=True)
class Route:
    """Where one stream's bytes go: its input's key template, roll-over limits and compression."""

    stream: str  # the path the stream follows
    host: str
    input: InputConfig

    def base_key(self, now: datetime) -> str:
        """The rendered key template (``KeyRenderError`` if unsafe)."""
        fixed = self._fixed_key
        return fixed if fixed is not None else self.input.key.render(KeyFields(self.host, self.stream, self.input.label, now))

    @cached_property
    def _fixed_key(self) -> str | None:
        """The key once and for all when the template has no ``{date}`` (it is asked for at every turn)."""
        if self.input.key.uses_date:
            return None
        return self.input.key.render(KeyFields(self.host, self.stream, self.input.label, datetime.now(timezone.utc)))

    def codec(self) -> Codec:
        return GzipMembers() if self.input.compression == "gzip" else Identity()


class Lane:
    """One stream's queue of batches and its shipping state."""

    def __init__(self, route: Route, state: StreamState) -> None:
        self.route = route
        self.state = state  # the newest state; the checkpoint has it, or will with the next save
        self.queue: deque[Batch] = deque()
        self.queued = 0  # bytes in ``queue``
        self.busy = False  # a turn is running
        self.blocked = False  # paused after a refusal
        self.failed: str | None = None  # stopped for this run, and why
        self.writer: ObjectWriter | None = None
        self.appends = 0  # to the current object, by this run
        self.period: str | None = None  # calendar period the current object was started in (``roll.every``)
        self.retry: tuple[tuple[Batch, ...], bytes] | None = None  # the body of the append in progress
        self._last: tuple[int, int] | None = None  # (generation, end) of the newest batch queued

    @property
    def stream(self) -> str:
        return self.route.stream

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing in progress: the state is final until new bytes come."""
        return not self.busy and not self.queue and self.retry is None

    @property
    def has_work(self) -> bool:
        return bool(self.queue) or self.retry is not None

    def push(self, batch: Batch) -> None:
        if self._last is not None and self._last[0] == batch.generation and self._last[1] != batch.offset:
            raise StreamError(
                self.stream, f"batch at file offset {batch.offset} does not follow the previous one (ended at {self._last[1]})"
            )
        self._last = (batch.generation, batch.end)
        self.queue.append(batch)
        self.queued += batch.size

    def take(self, max_bytes: int) -> tuple[Batch, ...]:
        """The next append's batches: one file range (same generation, contiguous), at most ``max_bytes``
        (or the first batch alone, whatever its size)."""
        first = self.queue.popleft()
        taken, size, end = [first], first.size, first.end
        while self.queue:
            following = self.queue[0]
            if following.generation != first.generation or following.offset != end or size + following.size > max_bytes:
                break
            taken.append(self.queue.popleft())
            size += following.size
            end = following.end
        self.queued -= size
        return tuple(taken)

    def drop_all(self, *, keep_retry: bool = False) -> int:
        """Forget everything queued (and the append in progress unless ``keep_retry``); return its size in file bytes."""
        size = self.queued
        if self.retry is not None and not keep_retry:
            size += sum(b.size for b in self.retry[0])
            self.retry = None
        self.queue.clear()
        self.queued = 0
        return size

    def __repr__(self) -> str:
        flags = "".join(c for c, on in (("B", self.busy), ("P", self.blocked), ("F", self.failed is not None)) if on)
        return (
            f"<Lane {self.stream} key={self.state.key} offset={self.state.offset} length={self.state.object_length} "
            f"queued={len(self.queue)}/{self.queued}B intent={self.state.intent is not None} {flags}>"
        )
