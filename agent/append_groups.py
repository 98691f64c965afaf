"""Many streams' small appends in one request: the shipper's groups for AppendObjects.

An append costs the agent about the same CPU whatever its size, almost all of
it per request: signing, HTTP framing, a round trip and the task switches
around them.  A thousand quiet logs, each needing an append a second to stay
fresh, were a thousand requests a second, more than half a core.  When the
dispatcher starts several turns at once (``agent.turn_order``), the lanes
with a small append and nothing unusual about it (``may_join``) share one
``AppendObjects`` request (``sink.append_batch``), tailbucket's server's one
extension to S3: every item is an offset-fenced PutObject decided on its own.

Exactly once is unchanged: each item's intent is on disk before the request
goes (one write for the group), a 200 result is recorded like a PUT's 200,
and an item that did not land (refused, or the request went unanswered)
goes on as its own turn, whose writer looks (HEAD) before sending again.

A sink that refuses the request as a whole with an answer that says it does
not know it (S3 Express, RustFS, any other server) turns groups off for the
run: from then on every append is its own PUT, as before.
"""

from __future__ import annotations

import structlog

from agent import events
from agent.batcher import joined
from agent.checkpoint import Intent
from agent.lanes import Lane
from agent.metrics import AgentMetrics
from agent.objects import StreamObjects
from sink.append_batch import BatchItem, ItemResult
from sink.errors import AuthError, ConflictError, SinkError
from sink.retry import is_retriable

log = structlog.get_logger()

MAX_ITEM_BYTES = 256 << 10  # a lane with more queued goes alone (a busy stream's own turns overlap their writes)
MAX_REQUEST_BYTES = 256 << 10  # bodies per request: what one 1 MiB PUT holds (memory stays flat after an outage)
UNKNOWN_OPERATION = {400, 404, 405, 501}  # whole-request refusals that mean "no such operation here"


class AppendGroups:
    """Whether lanes may share a request, taking their appends, and sending them."""

    def __init__(self, objects: StreamObjects, bucket: str, metrics: AgentMetrics, *, enabled: bool = True) -> None:
        self._objects = objects
        self.bucket = bucket
        self._metrics = metrics
        self.enabled = enabled
        self.requests = 0  # AppendObjects requests sent
        self.items = 0  # appends they carried

    def may_join(self, lane: Lane) -> bool:
        """A small append with nothing in progress and an open, plain writer (no compression: a gzip
        member is encoded off the event loop, in the lane's own turn)."""
        writer = lane.writer
        return (self.enabled and writer is not None and writer.pending is None and lane.retry is None
                and lane.state.intent is None and 0 < lane.queued <= MAX_ITEM_BYTES
                and lane.route.input.compression == "none")

    def take(self, lanes: list[Lane], max_bytes: int, alone: list[Lane]) -> list[tuple[Lane, BatchItem]]:
        """Take each lane's next append and record its intent in memory (the caller saves them);
        a lane that cannot go in the request (a roll-over due, too big for it) goes to ``alone``
        with its append taken but not recorded, as its own turn would find it."""
        taken: list[tuple[Lane, BatchItem]] = []
        size = 0
        for lane in lanes:
            batches = lane.take(max_bytes)
            body = joined(batches)
            lane.retry = (batches, body)
            writer = lane.writer
            r0 = lane.state.object_length
            item = None
            if (writer is not None and writer.offset == r0 and size + len(body) <= MAX_REQUEST_BYTES
                    and self._objects.roll_for(lane, len(body)) is None):
                item = writer.batch_item(body)
            if item is None:
                alone.append(lane)
                continue
            lane.state = lane.state.with_intent(Intent(batches[-1].identity, batches[0].offset, batches[-1].end,
                                                       r0, r0 + len(body)))
            taken.append((lane, item))
            size += len(body)
        return taken

    async def send(self, taken: list[tuple[Lane, BatchItem]]) -> list[ItemResult | None]:
        """One request for every item; ``None`` for an item whose fate is unknown (no answer)."""
        items = [item for _, item in taken]
        self.requests += 1
        try:
            results: list[ItemResult | None] = list(await self._objects.client.append_objects(self.bucket, items))
        except SinkError as exc:
            if is_retriable(exc):
                return [None] * len(items)
            status = getattr(exc, "status", 0)
            if status in UNKNOWN_OPERATION and not isinstance(exc, AuthError) and getattr(exc, "code", "") != "NoSuchBucket":
                self.enabled = False
                log.warning(events.APPEND_GROUPS_OFF, bucket=self.bucket, status=status, code=getattr(exc, "code", None),
                            error=str(exc))
            refused = ItemResult(status or 400, code=getattr(exc, "code", None), message=str(exc))
            return [refused] * len(items)  # refused whole: nothing was written
        self.items += len(items)
        return results

    def settle(self, taken: list[tuple[Lane, BatchItem]], results: list[ItemResult | None]
               ) -> list[tuple[Lane, int | ConflictError | None]]:
        """Each result into its lane's writer: the object's new length where the append landed, a
        ConflictError where the object is not what was recorded, None where it did not land (refused,
        or unknown: the writer looks before sending again, in the lane's own turn)."""
        landed = sum(1 for result in results if result is not None and result.ok)
        self._metrics.shared_appends.inc(landed)
        log.debug(events.APPENDS_SHARED, bucket=self.bucket, appends=len(taken), landed=landed)
        outcomes: list[tuple[Lane, int | ConflictError | None]] = []
        for (lane, _), result in zip(taken, results):
            writer = lane.writer
            assert writer is not None
            if result is None or not result.ok:
                writer.batch_failed(result)
                outcomes.append((lane, None))
                continue
            try:
                outcomes.append((lane, writer.batch_landed(result)))
            except ConflictError as exc:
                outcomes.append((lane, exc))
        return outcomes
