"""Each stream's object: its writer at the recorded length, intents settled at start, roll-over.

* ``open``: the stream's ``ObjectWriter`` at the length the checkpoint
  recorded.  With no intent on record no HEAD is needed: the first append
  goes out at that length and the server's offset check refuses it if the
  object is not that long (the writer then finds the conflict).  With an
  intent (and perhaps those recorded after it), one HEAD decides it: the
  length says how many of them landed (``StreamState.settled_at``); any other
  length is a conflict.
* ``roll_for`` and ``roll``: before an append, move to the next key when a
  ``roll`` limit is reached or the rendered key changed (``agent.pacing``); a
  target that already holds data is skipped, never appended to.
* ``on_intent``: the writer announces every send; it must be the append
  recorded first, the same file bytes at the same place.  If not (the server
  refused the object as full, ``TooManyParts``, and the writer rolled over by
  itself; or appends recorded ahead were taken otherwise), nothing recorded
  was sent: the append is recorded again, alone, before it goes.
"""

from __future__ import annotations

import random
from datetime import datetime
from functools import partial
from typing import Awaitable, Callable, NamedTuple

import structlog

from agent import events
from agent.ahead import MAX_PENDING, whole_appends
from agent.checkpoint import Intent, StreamState
from agent.lanes import Lane
from agent.metrics import AgentMetrics
from agent.pacing import ObjectSoFar, index_under, part_key, period_of, roll_target
from sink import append as sink_append
from sink.append import ObjectWriter, Reconciled
from sink.client import S3Client
from sink.errors import ConflictError
from sink.retry import RetryPolicy

log = structlog.get_logger()
MAX_PART_PROBES = 100  # roll-over targets tried before giving up on a stream


class Roll(NamedTuple):
    """A due roll-over: the key to try first, why, the key template's base and the period it is for."""

    key: str
    reason: str
    base: str
    period: str | None


class StreamObjects:
    """Makes and moves the lanes' writers; ``record`` saves a lane's state (the shipper's group commit)."""

    def __init__(self, client: S3Client, bucket: str, *, retry: RetryPolicy, s3express: bool, metrics: AgentMetrics,
                 wall_clock: Callable[[], datetime], record: Callable[[Lane], Awaitable[None]]) -> None:
        self.client = client
        self.bucket = bucket
        self.retry = retry
        self.s3express = s3express
        self.metrics = metrics
        self._wall = wall_clock
        self._record = record

    def _writer(self, lane: Lane, key: str, base: str, index: int) -> ObjectWriter:
        return ObjectWriter(
            self.client, self.bucket, key, retry=self.retry, next_key=partial(part_key, base), index=index,
            s3express=self.s3express, on_intent=partial(self.on_intent, lane), rand=self._jitter,
        )

    async def open(self, lane: Lane) -> bool:
        """Give ``lane`` its writer; True if that settled an intent (the lane's state changed)."""
        if lane.writer is not None:
            return False
        state = lane.state
        base = lane.route.base_key(self._wall())
        index = index_under(state.key, base)
        if index is None:  # an older template or date: the next append rolls to the current one
            base, index = state.key, 0
        writer = self._writer(lane, state.key, base, index)
        intent = state.intent
        if intent is None:
            writer.offset = state.object_length
            lane.writer = writer
            return False
        length = await writer.open()
        settled = state.settled_at(length)
        if settled is None:
            lengths = [intent.r0] + [each.r1 for each in state.pending]
            raise ConflictError("the object is not as the recorded appends left it", bucket=self.bucket, key=state.key,
                                expected=" or ".join(map(str, lengths)), actual=length)
        verdict = Reconciled.LANDED if settled.object_length > state.object_length else Reconciled.NOT_LANDED
        lane.state = settled
        log.info(events.INTENT_RESOLVED, stream=lane.stream, key=state.key, verdict=verdict.value, length=length,
                 f0=intent.f0, f1=intent.f1, r0=intent.r0, r1=intent.r1, recorded=len(state.pending),
                 last_r1=state.pending[-1].r1)
        lane.writer = writer
        return True

    def roll_due(self, lane: Lane, body: int, *, length: int, appends: int) -> bool:
        """Would ``body`` bytes go to another object once the lane's object holds ``length`` bytes
        from ``appends`` appends?  (A look only: the next append is recorded ahead only when not.)"""
        now = self._wall()
        period = period_of(now, lane.route.input.roll.every)
        current = ObjectSoFar(lane.state.key, length, appends, lane.period or period)
        return roll_target(lane.route.input.roll, current, lane.route.base_key(now), period, body) is not None

    def with_appends_ahead(self, lane: Lane, state: StreamState, max_bytes: int) -> StreamState:
        """``state`` with the whole appends queued in ``lane`` recorded after its last one (``agent.ahead``),
        up to ``MAX_PENDING`` in all, stopping before one that would go to another object.  Only
        without compression: a compressed body's length is known once it is encoded."""
        if lane.route.input.compression != "none":
            return state
        pending = len(state.pending)
        for intent in whole_appends(lane.queue, max_bytes, state.pending[-1]):
            if pending >= MAX_PENDING or self.roll_due(lane, intent.r1 - intent.r0, length=intent.r0,
                                                        appends=lane.appends + pending):
                break
            state = state.with_intent(intent)
            pending += 1
        return state

    def roll_for(self, lane: Lane, body: int) -> Roll | None:
        """Where the ``body`` bytes about to go must go instead of the lane's object, if anywhere.

        A pure look (it only notes the lane's period on first use), so a turn
        asks without a request slot and holds one only for an actual roll."""
        now = self._wall()
        base = lane.route.base_key(now)
        period = period_of(now, lane.route.input.roll.every)
        current = ObjectSoFar(lane.state.key, lane.state.object_length, lane.appends, lane.period or period)
        target = roll_target(lane.route.input.roll, current, base, period, body)
        if lane.period is None:
            lane.period = period
        return None if target is None else Roll(*target, base, period)

    async def roll(self, lane: Lane, roll: Roll) -> None:
        """Move ``lane`` to its next object: the first free key from ``roll.key`` on."""
        key, base = roll.key, roll.base
        index = index_under(key, base) or 0
        for _ in range(MAX_PART_PROBES):
            writer = self._writer(lane, key, base, index)
            if await writer.open() == 0:
                break
            index += 1
            key = part_key(base, index)
        else:
            raise ConflictError("no free roll-over key", bucket=self.bucket, key=key, expected=0, actual="data")
        log.info(events.STREAM_ROLLED, stream=lane.stream, old_key=lane.state.key, new_key=key, reason=roll.reason,
                 length=lane.state.object_length)
        lane.state = lane.state.rolled(key)
        lane.writer, lane.appends, lane.period = writer, 0, roll.period

    async def on_intent(self, lane: Lane, announced: sink_append.Intent) -> None:
        """The writer is about to send: it must be the append recorded first (its place and its file bytes)."""
        state, recorded = lane.state, lane.state.intent
        assert lane.retry is not None
        batches, _ = lane.retry
        if recorded is not None and (announced.key, announced.offset, announced.length) == (state.key, recorded.r0, recorded.r1 - recorded.r0) \
                and (recorded.identity, recorded.f0, recorded.f1) == (batches[-1].identity, batches[0].offset, batches[-1].end):
            return
        # Not the append recorded: the server refused the object as full (TooManyParts) and the writer moved on,
        # or appends recorded ahead were taken otherwise.  Nothing recorded was sent (only the first may have been,
        # and it was refused): record this one alone, durably, before it goes.
        if recorded is not None:
            state = state.not_landed()
        if announced.key != state.key:
            log.info(events.STREAM_ROLLED, stream=lane.stream, old_key=state.key, new_key=announced.key, reason="server_full")
            state = state.rolled(announced.key)
            lane.appends = 0
        r0 = announced.offset
        lane.state = state.with_intent(Intent(batches[-1].identity, batches[0].offset, batches[-1].end, r0, r0 + announced.length))
        await self._record(lane)

    def _jitter(self) -> float:
        """The writers' retry jitter; every retry draws exactly one sample, so this counts them."""
        self.metrics.retries.inc()
        return random.random()
