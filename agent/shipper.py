"""Batches in, appends out: each stream's bytes into its object, exactly once.

The protocol (DESIGN.md, "Exactly once, end to end"), per append:

1. take the stream's queued batches (one file range, up to ``max_bytes``);
2. record the intent "file bytes [f0, f1) go at object offset r0, making it
   r1" in the checkpoint, together with every other stream's progress that is
   not on disk yet (one write for many streams: group commit);
3. PUT through the stream's ``ObjectWriter``, which retries with backoff and
   reconciles ambiguous failures by HEAD (landed / not landed / conflict);
4. on the answer: the state becomes (f1, r1) in memory and the read-ahead
   budget is released.  It reaches the disk with the next write, at most
   ``FLUSH_DELAY`` later.  That is safe because an intent on disk whose
   append landed is recognised at the next start (HEAD shows r1).

A stream that is behind (a full append already queued) does steps 1-2 for
its next appends while step 3 is on the wire (``agent.next_appends``;
``StreamState.next_intent`` and ``later_intents``, up to
``agent.ahead.MAX_PENDING`` in one write): its
PUTs follow each other without a checkpoint write in between, and each PUT
still goes out only once its intent is on disk.

At most ``max_in_flight`` streams have a request on the wire, and a few times
that many turns are under way, so the intents of the streams waiting for a
request slot share one checkpoint write.  Turns are handed out round-robin
and paced by a token bucket (``agent.turn_order``: who goes next, and when;
with many streams waiting, several at once): while a stream waits, its new
batches join the same append.  Turns that start together and carry small
appends share one ``AppendObjects`` request (``agent.append_groups``; up to
``MAX_GROUP`` a request), where the sink offers it.  A conflict (the object is not what we recorded)
stops that stream for this run, loudly; a definite refusal (no bucket, access
denied) pauses it and tries again.  Batches come
from the tailers through ``enqueue`` (or a channel); when the input ends
(``end_input``) the shipper drains: every queued batch goes out, pacing aside,
and the checkpoint is written last.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Callable

import structlog
import trio

from agent import events
from agent.append_groups import AppendGroups
from agent.batcher import Batch
from agent.checkpoint import Checkpoint, CheckpointConflict, Intent, StreamState
from agent.connect import SinkHealth
from agent.errors import AgentError, CheckpointError
from agent.lanes import Lane, Route
from agent.metrics import AgentMetrics, StreamPosition
from agent.next_appends import NextAppends, encoded
from agent.objects import StreamObjects
from agent.request_slots import RequestSlots
from agent.tailer import ReadAheadBudget
from agent.turn_order import TurnOrder
from agent.unsaved import UnsavedStates
from sink.client import S3Client
from sink.errors import AppendPending, ConflictError, RollOverRequired, SinkError
from sink.heap import SentBodies
from sink.retry import RetryPolicy

log = structlog.get_logger()

APPEND_RATE = 200.0  # appends a second, all streams together, until agent.cpu_budget sizes the rate (this is its floor)
APPEND_BURST = 64.0
REFUSAL_PAUSE = 5.0  # seconds a refused stream waits before trying again
TURNS_PER_SLOT = 32  # turns under way per request slot: their intents go to disk in one write
MAX_GROUP = 64  # turns in one AppendObjects request (``agent.append_groups``): two requests' worth may be under way
FLUSH_DELAY = 0.2  # seconds an acknowledged state may wait in memory for a write to share
# The log file is the buffer: never give up, back off up to 2 s so a returning server is used soon.
AGENT_RETRY = RetryPolicy(base=0.1, cap=2.0, max_attempts=None, max_elapsed=math.inf)


class Shipper:
    """Every stream's lane, and the task that gives them turns.  ``run`` is the component."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        client: S3Client,
        bucket: str,
        budget: ReadAheadBudget,
        *,
        max_bytes: int,
        max_in_flight: int,
        rate: float = APPEND_RATE,
        burst: float = APPEND_BURST,
        retry: RetryPolicy = AGENT_RETRY,
        metrics: AgentMetrics | None = None,
        health: SinkHealth | None = None,
        s3express: bool = False,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
        on_failed: Callable[[str], None] | None = None,
        append_groups: bool = True,
    ) -> None:
        self.checkpoint = checkpoint
        self.bucket = bucket
        self.budget = budget
        self.max_bytes = max_bytes
        self.metrics = metrics or AgentMetrics()
        self.health = health or SinkHealth()
        self.on_failed = on_failed
        self._lanes: dict[str, Lane] = {}
        self._order = TurnOrder(rate, burst, max_turns=max_in_flight * TURNS_PER_SLOT, max_bytes=max_bytes)
        self._unsaved = UnsavedStates(checkpoint)  # states newer than the checkpoint file
        self._slots = RequestSlots(max_in_flight)  # requests on the wire
        self._flush_soon = trio.Event()
        self._drained = trio.Event()
        self._input_ended = trio.Event()
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._sent = SentBodies()  # frees past request bodies every few MiB
        # Told of a stream expected again as its turn ends, with its place (discovery reads it now if that is near).
        self.on_expected: Callable[[str, int], None] | None = None
        self._objects = StreamObjects(client, bucket, retry=retry, s3express=s3express, metrics=self.metrics,
                                      wall_clock=wall_clock, record=self._unsaved.save_with)
        self._next = NextAppends(self._objects, budget, max_bytes, self._unsaved.save_with)
        self._groups = AppendGroups(self._objects, bucket, self.metrics, enabled=append_groups and not s3express)

    # -- streams -------------------------------------------------------------------

    def lane(self, stream: str) -> Lane | None:
        return self._lanes.get(stream)

    def add_stream(self, route: Route, state: StreamState) -> Lane:
        """Ship ``route.stream`` from ``state`` (new, or from the checkpoint); saved with the next write.

        A stream already known keeps its state and only takes the new route.
        """
        lane = self._lanes.get(route.stream)
        if lane is not None:
            lane.route = route
            return lane
        lane = self._lanes[route.stream] = Lane(route, state)
        self._unsaved.mark(lane)
        return lane

    @property
    def lanes(self) -> dict[str, Lane]:
        return dict(self._lanes)

    def positions(self) -> list[StreamPosition]:
        return [StreamPosition(s, s, lane.state.identity, lane.state.offset) for s, lane in self._lanes.items()]

    @property
    def order(self) -> TurnOrder:
        """Who appends next, and when.  The app sizes its ``rate`` (``agent.cpu_budget``) and
        reads files by it: those ``within`` the next turns now, those ``beyond`` later."""
        return self._order

    def expect(self, stream: str) -> int | None:
        """Give a stream whose file changed its place in the turn order before its new bytes are read.

        They are read once, as the turn comes near (``agent.discovery``), rather than
        once to queue the stream and once more before its turn.  The place takes its
        token like any turn, so the read has the time of the turns ahead to land
        (``LEAD``); if it found nothing, the place passes.  A stream is expected again
        as each of its turns ends, too.  Returns the place (0: next), or ``None`` when
        the stream cannot wait for a turn now (unknown, failed, paused, in a turn,
        already waiting, or draining)."""
        lane = self._lanes.get(stream)
        order = self._order
        if lane is None or lane.failed is not None or lane.blocked or lane.busy or order.draining or stream in order:
            return None
        return self._line_up(lane)

    async def resolve(self, stream: str) -> StreamState | None:
        """Open the stream's object and settle an append recorded before a restart (HEAD).

        Returns the state to read from, or ``None`` when the stream failed (its
        object is not as recorded).  A refusal is retried after a pause.
        """
        lane = self._lanes[stream]
        while lane.failed is None:
            try:
                async with self._slots:
                    if await self._objects.open(lane):
                        self._unsaved.mark(lane)
                return lane.state
            except (ConflictError, AgentError) as exc:
                self._fail(lane, exc)
            except SinkError as exc:
                self.health.refused(str(exc))
                log.error(events.APPEND_REFUSED, stream=stream, key=lane.state.key, error=str(exc), retry_in=REFUSAL_PAUSE)
                await trio.sleep(REFUSAL_PAUSE)
        return None

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is checked after every append and every ``notify``."""
        while not predicate():
            await self._progress.wait()

    async def save(self, *, durable: bool = False) -> None:
        """Write every state newer than the checkpoint file.

        With nothing new this returns at once, unless ``durable``: then it also
        waits for a write that another task started with this task's states in it.
        """
        await self._unsaved.save(durable=durable)

    # -- the component ------------------------------------------------------------------

    async def run(self, batches: trio.MemoryReceiveChannel[Batch] | None = None,
                  *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ship until the input ends and every batch is out; the checkpoint is written last.

        The input is ``batches``, or with none, ``enqueue`` calls until ``end_input``."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._dispatch)
                nursery.start_soon(self._flush_acknowledged)
                task_status.started()
                if batches is None:
                    await self._input_ended.wait()
                else:
                    async with batches:
                        async for batch in batches:
                            self._enqueue(batch)
                self._order.draining = True
                self._wakeup()
                await self._drained.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                self._unsaved.mark(*self._lanes.values())
                await self.save()

    def enqueue(self, batch: Batch) -> None:
        """Take a batch now, from any task (``agent.batcher.ChunkHandover``: no channel, no task switch)."""
        self._enqueue(batch)

    def end_input(self) -> None:
        """No more batches will come: ``run`` drains and returns."""
        self._input_ended.set()

    def _enqueue(self, batch: Batch) -> None:
        self.metrics.read_bytes.inc(batch.size)
        lane = self._lanes.get(batch.stream)
        if lane is None or lane.failed is not None:
            self.budget.release(batch.size)
            return
        try:
            lane.push(batch)
        except AgentError as exc:
            self.budget.release(batch.size)
            self._fail(lane, exc, in_turn=False)
            return
        if not lane.busy and not lane.blocked and lane.stream not in self._order:
            self._line_up(lane)

    async def _dispatch(self) -> None:
        """Hand out turns: free slots, tokens (unless draining), round-robin."""
        assert self._nursery is not None
        order = self._order
        while True:
            self._wake = trio.Event()
            now = trio.current_time()
            group: list[Lane] = []
            while (lane := order.next_turn(now)) is not None:
                if not lane.has_work:
                    continue  # expected, and its read as the turn came near found nothing: the place passes
                lane.busy = True
                order.running += 1
                if self._groups.may_join(lane):
                    group.append(lane)
                else:
                    self._nursery.start_soon(self._turn, lane)
            for first in range(0, len(group), MAX_GROUP):  # several requests in flight: one slow one stalls no other
                lanes = group[first : first + MAX_GROUP]
                if len(lanes) > 1:
                    self._nursery.start_soon(self._group_turn, lanes)
                else:
                    self._nursery.start_soon(self._turn, lanes[0])
            if order.draining and not order and order.running == 0:
                self._drained.set()
                return
            with trio.move_on_at(order.next_look(now)):
                await self._wake.wait()

    async def _flush_acknowledged(self) -> None:
        """Acknowledged states reach the disk with the next intent, or at most FLUSH_DELAY later."""
        while True:
            await self._flush_soon.wait()
            await trio.sleep(FLUSH_DELAY)  # the group-commit window
            self._flush_soon = trio.Event()
            await self.save()

    async def _turn(self, lane: Lane) -> None:
        try:
            await self._ship(lane)
            while self._goes_again(lane):
                self.notify()
                await self._ship(lane)
        finally:
            self._turn_ended(lane)

    async def _group_turn(self, lanes: list[Lane]) -> None:
        """Turns that share one AppendObjects request (``agent.append_groups``): their intents go to
        disk in one write, then one request carries every append.  A lane the request did not land
        (refused, or no answer) takes its own turn from there, as after a failed PUT: its intent is
        on record, so its writer looks (HEAD) before sending again."""
        alone: list[Lane] = []
        done: list[Lane] = []
        try:
            taken = self._groups.take(lanes, self.max_bytes, alone)
            if taken:
                try:
                    await self._unsaved.save_with(*(lane for lane, _ in taken))
                except CheckpointError as exc:
                    if not isinstance(exc, CheckpointConflict):
                        raise  # progress cannot be recorded: nothing may be sent
                    for lane, _ in taken:
                        self._fail(lane, exc)
                    done += [lane for lane, _ in taken]
                    return
                async with self._slots:
                    results = await self._groups.send(taken)
                for lane, outcome in self._groups.settle(taken, results):
                    if outcome is None:
                        alone.append(lane)
                        continue
                    done.append(lane)
                    if isinstance(outcome, ConflictError):
                        self._fail(lane, outcome)
                    else:
                        assert lane.retry is not None
                        self._landed(lane, *lane.retry, outcome)
        finally:
            for lane in done:
                self._turn_ended(lane)
            assert self._nursery is not None
            for lane in alone:
                self._nursery.start_soon(self._turn, lane)  # still busy, still counted as running

    def _turn_ended(self, lane: Lane) -> None:
        lane.busy = False
        order = self._order
        # The dispatcher waits for a token when a turn is free and lanes wait: a turn ending
        # changes what it waits for only if every turn was taken, or nothing waited, or it drains.
        dispatcher_stuck = order.running >= order.max_turns or not order or order.draining
        order.running -= 1
        # Back in line: with what was read meanwhile, or expected (its file is read as the turn comes near).
        if lane.failed is None and not lane.blocked and (lane.has_work or not order.draining):
            place = order.line_up(lane)
            if not lane.has_work and self.on_expected is not None:
                self.on_expected(lane.stream, place)
        if dispatcher_stuck:
            self._wakeup()
        self.notify()

    def _goes_again(self, lane: Lane) -> bool:
        """A lane whose next append is taken and recorded keeps its turn when no other lane waits and a
        token is there: a busy lone stream's PUTs follow each other without a trip through the dispatcher
        (a wake-up and a new task, while its read-ahead refills run first)."""
        if lane.retry is None or lane.state.intent is None or lane.failed is not None or lane.blocked or self._order:
            return False
        return self._order.may_go(lane, trio.current_time())

    # -- one append ----------------------------------------------------------------------

    async def _ship(self, lane: Lane) -> None:
        try:
            if lane.failed is not None:
                return
            if lane.writer is None:
                async with self._slots:
                    if await self._objects.open(lane):
                        self._unsaved.mark(lane)
            if lane.retry is None:
                batches = lane.take(self.max_bytes)
                lane.retry = (batches, await encoded(lane, batches))
            batches, body = lane.retry
            if lane.state.intent is None:  # else recorded ahead, or an append whose outcome is still unknown
                if (roll := self._objects.roll_for(lane, len(body))) is not None:
                    async with self._slots:
                        await self._objects.roll(lane, roll)
                r0 = lane.state.object_length
                intent = Intent(batches[-1].identity, batches[0].offset, batches[-1].end, r0, r0 + len(body))
                lane.state = lane.state.with_intent(intent)
                await self._unsaved.save_with(lane)  # outside the slot: turns waiting for one share this write
            length = await self._append(lane, body)
        except CheckpointError as exc:
            if not isinstance(exc, CheckpointConflict):
                raise  # progress cannot be recorded: nothing may be sent
            self._fail(lane, exc)
            return
        except (ConflictError, RollOverRequired, AppendPending, AgentError) as exc:
            self._fail(lane, exc)
            return
        except SinkError as exc:
            self._refused(lane, exc)
            return
        self._landed(lane, batches, body, length)
        lane.retry = self._next.pop(lane.stream)

    async def _append(self, lane: Lane, body: bytes) -> int:
        """Send the lane's append; meanwhile take its next one and record that too, when it is worth it."""
        assert lane.writer is not None and lane.state.intent is not None
        if not self._next.worth_taking(lane, len(body)):
            async with self._slots:
                return await lane.writer.append(body)
        failures: list[Exception] = []
        length, refused = 0, None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._next.take, lane, lane.state.intent, failures)
            try:
                async with self._slots:
                    length = await lane.writer.append(body)
            except Exception as exc:  # raised once the next intent's write is over, never in a group
                refused = exc
        if failures:
            raise failures[0]  # the checkpoint cannot be written: nothing more may be sent
        if refused is not None:
            raise refused
        return length

    def _landed(self, lane: Lane, batches: tuple[Batch, ...], body: bytes, length: int) -> None:
        lane.retry = None
        lane.state = lane.state.landed()
        lane.appends += 1
        self._unsaved.mark(lane)
        size = sum(b.size for b in batches)
        self.budget.release(size)
        now = trio.current_time()
        self.metrics.appends.inc()
        self.metrics.shipped_bytes.inc(size)
        for batch in batches:
            self.metrics.latency.observe(now - batch.started)
        self.health.accepted()
        log.debug(events.APPEND_ACKED, stream=lane.stream, key=lane.state.key, offset=lane.state.offset,
                  object_length=length, body=len(body), identity=str(lane.state.identity))
        self._sent.sent(len(body))
        if not lane.queue:
            self._flush_soon.set()  # nothing follows soon to carry this state to disk

    # -- trouble ---------------------------------------------------------------------------

    def _fail(self, lane: Lane, exc: Exception, *, in_turn: bool = True) -> None:
        """Stop the stream for this run.  Outside its turn, a turn in progress keeps (and settles) its batches."""
        self.budget.release(lane.drop_all(keep_retry=lane.busy and not in_turn))
        self._next.drop(lane.stream)
        if lane.failed is not None:
            return
        lane.failed = str(exc)
        self._order.leave(lane.stream)
        if isinstance(exc, ConflictError):
            self.metrics.conflicts.inc()
        log.error(events.STREAM_FAILED, stream=lane.stream, key=lane.state.key, offset=lane.state.offset,
                  error=str(exc), error_type=type(exc).__name__)
        self.notify()
        if self.on_failed is not None:
            self.on_failed(lane.stream)

    def _refused(self, lane: Lane, exc: SinkError) -> None:
        writer = lane.writer
        if lane.state.intent is not None and writer is not None and writer.pending is None:
            lane.state = lane.state.not_landed()  # refused outright: nothing was written
            self._unsaved.mark(lane)
        self.health.refused(str(exc))
        log.error(events.APPEND_REFUSED, stream=lane.stream, key=lane.state.key, error=str(exc),
                  error_type=type(exc).__name__, retry_in=REFUSAL_PAUSE)
        lane.blocked = True
        assert self._nursery is not None
        self._nursery.start_soon(self._unblock_later, lane)

    async def _unblock_later(self, lane: Lane) -> None:
        await trio.sleep(REFUSAL_PAUSE)
        lane.blocked = False
        if lane.failed is None and lane.has_work and not lane.busy:
            self._order.line_up(lane)
            self._wakeup()

    # -- small things ----------------------------------------------------------------------

    def _line_up(self, lane: Lane) -> int:
        """A lane outside a turn joins the line; its place."""
        if not self._order:  # otherwise the dispatcher already waits for a token or a turn's end
            self._wakeup()
        return self._order.line_up(lane)

    def _wakeup(self) -> None:
        self._wake.set()

    def notify(self) -> None:
        """Wake ``wait_for`` callers: something they may be waiting on changed (the app calls it too)."""
        self._progress.set()
        self._progress = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<Shipper {self.bucket} streams={len(self._lanes)} ready={len(self._order)} running={self._order.running} "
            f"unsaved={len(self._unsaved)} draining={self._order.draining} {self.budget!r}>"
        )
