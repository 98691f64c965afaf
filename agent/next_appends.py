"""A busy stream's next append, taken and recorded while the one before it is on the wire.

A stream that is behind (a full append already queued) would take the same
next append whenever it took it, so its turn takes it during the PUT before
it: the batches are taken, encoded, and their intent written (with the whole
appends queued behind it, ``StreamObjects.with_appends_ahead``: one flush per
few appends) while the server works.  The next PUT then follows at once,
still only after its intent is on disk.  The batches belong to this record
until that turn (``pop``).  If the append on the wire did not keep its
recorded place (the server made the writer roll over), the next intent is
left unrecorded: its turn records it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from agent.batcher import Batch, joined
from agent.checkpoint import Intent
from agent.lanes import Lane
from agent.objects import StreamObjects
from agent.tailer import ReadAheadBudget

Taken = tuple[tuple[Batch, ...], bytes]  # the batches and the body they make


async def encoded(lane: Lane, batches: tuple[Batch, ...]) -> bytes:
    """The body of an append of these batches, in the lane's encoding (compression off the event loop)."""
    data = joined(batches)
    codec = lane.route.codec()
    if codec.name == "identity":
        return data
    return await trio.to_thread.run_sync(codec.encode, data)


class NextAppends:
    """Next appends taken ahead, by stream."""

    def __init__(self, objects: StreamObjects, budget: ReadAheadBudget, max_bytes: int,
                 record: Callable[[Lane], Awaitable[None]]) -> None:
        self._objects = objects
        self._budget = budget
        self._max_bytes = max_bytes
        self._record = record
        self._taken: dict[str, Taken] = {}

    def pop(self, stream: str) -> Taken | None:
        """The stream's next append if one was taken ahead: its turn sends it."""
        return self._taken.pop(stream, None)

    def drop(self, stream: str) -> None:
        """Forget the stream's next append (the stream failed) and give its bytes back to the read-ahead budget."""
        taken = self._taken.pop(stream, None)
        if taken is not None:
            self._budget.release(sum(b.size for b in taken[0]))

    def worth_taking(self, lane: Lane, size: int) -> bool:
        """Behind (a full append already queued): the next append is the same whenever it is taken, so take it
        now.  Otherwise bytes read meanwhile would miss it and wait a whole turn longer.  ``size``: the body
        on the wire."""
        if lane.queued < self._max_bytes or lane.stream in self._taken:
            return False
        r1 = lane.state.object_length + size
        return not self._objects.roll_due(lane, self._max_bytes, length=r1, appends=lane.appends + 1)

    async def take(self, lane: Lane, sending: Intent, failures: list[Exception]) -> None:
        """Take the lane's next batches and record their append after ``sending`` (durably, group-committed),
        unless an earlier write recorded it ahead.  A checkpoint that cannot be written goes to ``failures``:
        the turn raises it, and nothing more is sent."""
        if not lane.queue or lane.failed is not None:
            return
        batches = lane.take(self._max_bytes)
        try:
            body = await encoded(lane, batches)
            state = lane.state
            r0 = sending.r1
            following = Intent(batches[-1].identity, batches[0].offset, batches[-1].end, r0, r0 + len(body))
            if lane.failed is None and state.intent == sending and state.next_intent != following:
                lane.state = self._objects.with_appends_ahead(lane, state.only_first().with_intent(following),
                                                              self._max_bytes)
                await self._record(lane)
        except Exception as exc:
            failures.append(exc)
            body = b""
        if lane.failed is not None or failures:
            self._budget.release(sum(b.size for b in batches))
            return
        self._taken[lane.stream] = (batches, body)
