"""Appends recorded ahead: one checkpoint write covers several of a busy stream's appends; a restart
settles them by the object's length, at any of their boundaries, and no other length."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import pytest
import trio
import trio.testing

from agent.ahead import MAX_PENDING, whole_appends
from agent.batcher import Batch
from agent.checkpoint import STATE_FILE, Intent, StreamState, load_states, write_states
from agent.errors import CheckpointError
from agent.lanes import Lane, Route
from agent.metrics import AgentMetrics
from agent.objects import StreamObjects
from sink import append as sink_append
from sink.retry import RetryPolicy
from sink.testing import FakeS3
from tests.agent.test_shipper import FILE, INPUT, NOON, OTHER_FILE, lines, shipping
from tests.agent.test_shipper_ahead import KEY, STREAM, GatedS3

# [100, 150) of FILE at object offset 1000, then [150, 180), then [0, 40) of the next file, then [40, 45)
BOUNDS = [(FILE, 100, 150), (FILE, 150, 180), (OTHER_FILE, 0, 40), (OTHER_FILE, 40, 45)]


def recorded(count: int = len(BOUNDS)) -> StreamState:
    state = StreamState(STREAM, KEY, FILE, offset=100, object_length=1000)
    r0 = 1000
    for identity, f0, f1 in BOUNDS[:count]:
        state = state.with_intent(Intent(identity, f0, f1, r0, r0 + f1 - f0))
        r0 += f1 - f0
    return state


def test_landings_take_the_recorded_appends_in_order() -> None:
    state = recorded()
    assert len(state.pending) == 4 and [i.r0 for i in state.pending] == [1000, 1050, 1080, 1120]
    for identity, _, f1 in BOUNDS:
        state = state.landed()
        assert (state.identity, state.offset) == (identity, f1)
    assert (state.object_length, state.pending) == (1125, ())


def test_the_first_not_landing_drops_them_all_and_only_first_keeps_the_one_on_the_wire() -> None:
    assert recorded().not_landed() == StreamState(STREAM, KEY, FILE, offset=100, object_length=1000)
    assert recorded().only_first().pending == recorded(1).pending


@pytest.mark.parametrize(("length", "identity", "offset"), [(1000, FILE, 100), (1050, FILE, 150), (1080, FILE, 180),
                                                             (1120, OTHER_FILE, 40), (1125, OTHER_FILE, 45)])
def test_every_recorded_boundary_settles_at_its_file_offset(length: int, identity: object, offset: int) -> None:
    state = recorded().settled_at(length)
    assert state is not None and (state.identity, state.offset, state.object_length, state.pending) == (identity, offset, length, ())


@pytest.mark.parametrize("length", [0, 999, 1001, 1079, 1081, 1119, 1124, 1126, 5000])
def test_a_length_at_no_recorded_boundary_is_not_ours(length: int) -> None:
    assert recorded().settled_at(length) is None


def test_the_recorded_appends_survive_the_file_and_older_files_still_load(tmp_path: Path) -> None:
    write_states(tmp_path, {STREAM: recorded()})
    assert load_states(tmp_path)[STREAM] == recorded()
    document = json.loads((tmp_path / STATE_FILE).read_text())
    assert len(document["streams"][STREAM]["later_intents"]) == 2
    del document["streams"][STREAM]["later_intents"]  # as an agent before this change wrote it
    (tmp_path / STATE_FILE).write_text(json.dumps(document))
    assert load_states(tmp_path)[STREAM] == recorded(2)


def test_a_later_intent_that_does_not_follow_is_corrupt(tmp_path: Path) -> None:
    write_states(tmp_path, {STREAM: recorded()})
    document = json.loads((tmp_path / STATE_FILE).read_text())
    document["streams"][STREAM]["later_intents"][1]["r0"] += 1
    (tmp_path / STATE_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="does not follow"):
        load_states(tmp_path)


def _batch(generation: int, offset: int, size: int) -> Batch:
    return Batch(STREAM, generation, FILE, offset, (b"x" * size,), size, 0.0)


def test_whole_appends_are_what_the_lane_will_take() -> None:
    """Groups up to max_bytes, cut at a gap in the file or a new generation; the last group may still grow."""
    batches = [_batch(1, 0, 40), _batch(1, 40, 40), _batch(1, 80, 40), _batch(1, 120, 90), _batch(2, 0, 10),
               _batch(2, 10, 10), _batch(2, 30, 5), _batch(2, 35, 5)]
    after = Intent(FILE, 0, 0, 500, 500)
    ahead = list(whole_appends(deque(batches), 100, after))
    lane = Lane(Route(STREAM, "h", INPUT), StreamState(STREAM, KEY, FILE))
    for batch in batches:
        lane.queue.append(batch)
        lane.queued += batch.size
    taken = [lane.take(100) for _ in range(len(ahead))]
    assert [(i.f0, i.f1, i.r1 - i.r0) for i in ahead] == [(t[0].offset, t[-1].end, sum(b.size for b in t)) for t in taken]
    assert [(i.f0, i.f1) for i in ahead] == [(0, 80), (80, 120), (120, 210), (0, 20)]
    assert [(i.r0, i.r1) for i in ahead] == [(500, 580), (580, 620), (620, 710), (710, 730)]
    assert [b.offset for b in lane.queue] == [30, 35]  # not whole: a batch at 40 may still join it


async def test_a_busy_stream_records_several_appends_per_write_and_never_sends_one_unrecorded(
        tmp_path: Path) -> None:
    data = lines("x", 300)  # 2400 bytes: twelve full appends of 200, queued at once
    state_dir = tmp_path / "state"
    shipper_box = []
    sent_recorded: list[bool] = []
    writes: list[int] = []  # the checkpoint's writes so far, at each append

    async def before_append(offset: int, size: int) -> None:
        # The append about to be applied is on disk already, among those recorded (the ones before it
        # may have landed without the disk knowing yet: acknowledgements are lazy)
        writes.append(shipper_box[0].checkpoint.writes)
        pending = load_states(state_dir)[STREAM].pending
        sent_recorded.append((offset, offset + size) in [(p.r0, p.r1) for p in pending])

    fake = GatedS3(before_append)
    async with shipping(tmp_path, fake, max_bytes=200) as h:
        shipper_box.append(h.shipper)
        h.add(STREAM)
        for i in range(0, len(data), 200):  # queued at once: the stream is behind
            await h.send(STREAM, data[i : i + 200])
        await h.shipped(STREAM, len(data))
    assert h.stored(KEY) == data
    assert sent_recorded == [True] * 12
    # while the other eleven went out: one write per MAX_PENDING - 1 appends, not one per append
    assert writes[-1] - writes[1] <= 1 + 11 // (MAX_PENDING - 1), writes
    assert h.on_disk()[STREAM] == StreamState(STREAM, KEY, FILE, len(data), len(data))
    assert h.shipper.budget.in_use == 0


async def test_compressed_streams_record_one_append_ahead_only(tmp_path: Path) -> None:
    """A gzip body's length is known once encoded: nothing is recorded beyond the next append."""
    data = lines("g", 200)
    seen: list[int] = []
    shipper_box = []

    async def before_append(offset: int, size: int) -> None:
        await trio.testing.wait_all_tasks_blocked()
        await shipper_box[0].checkpoint.save()
        seen.append(len(load_states(tmp_path / "state")[STREAM].pending))

    async with shipping(tmp_path, GatedS3(before_append), max_bytes=200) as h:
        shipper_box.append(h.shipper)
        h.add(STREAM, compression="gzip")
        for i in range(0, len(data), 200):
            await h.send(STREAM, data[i : i + 200])
        await h.shipped(STREAM, len(data))
    assert max(seen) <= 2 and len(seen) == 8


@pytest.mark.parametrize("landed", range(5))
async def test_a_restart_settles_at_each_recorded_boundary_and_ships_the_rest(tmp_path: Path, landed: int) -> None:
    data = lines("y", 40)  # 320 bytes: [0, 100) in the object, then four appends recorded
    bounds = [100, 150, 180, 260, 300]
    fake = FakeS3()
    fake.create_bucket("logs")
    fake.foreign_append("logs", KEY, data[: bounds[landed]])
    state = StreamState(STREAM, KEY, FILE, 100, 100)
    for f0, f1 in zip(bounds, bounds[1:]):
        state = state.with_intent(Intent(FILE, f0, f1, f0, f1))
    (tmp_path / "state").mkdir()
    write_states(tmp_path / "state", {STREAM: state})
    async with shipping(tmp_path, fake) as h:
        h.add(STREAM, h.shipper.checkpoint.get(STREAM))
        settled = await h.shipper.resolve(STREAM)
        assert settled is not None and (settled.offset, settled.pending) == (bounds[landed], ())
        h.offsets[(STREAM, 1)] = bounds[landed]  # the tailer reads again from the settled offset
        await h.send(STREAM, data[bounds[landed] :])
    assert h.stored(KEY) == data
    assert h.on_disk()[STREAM] == StreamState(STREAM, KEY, FILE, len(data), len(data))


async def test_a_restart_at_a_length_no_recorded_append_explains_stops_the_stream(tmp_path: Path) -> None:
    fake = FakeS3()
    fake.create_bucket("logs")
    fake.foreign_append("logs", KEY, b"z" * 170)  # inside the second recorded append
    state = StreamState(STREAM, KEY, FILE, 100, 100)
    for f0, f1 in [(100, 150), (150, 180), (180, 260)]:
        state = state.with_intent(Intent(FILE, f0, f1, f0, f1))
    (tmp_path / "state").mkdir()
    write_states(tmp_path / "state", {STREAM: state})
    failed: list[str] = []
    async with shipping(tmp_path, fake, on_failed=failed.append) as h:
        h.add(STREAM, h.shipper.checkpoint.get(STREAM))
        assert await h.shipper.resolve(STREAM) is None
    assert failed == [STREAM]
    assert fake.object_bytes("logs", KEY) == b"z" * 170  # untouched
    assert "100 or 150 or 180 or 260" in (h.shipper.lane(STREAM).failed or "")  # type: ignore[union-attr]
    assert load_states(tmp_path / "state")[STREAM].pending == state.pending  # left for a person to look at


def _recording_objects() -> tuple[StreamObjects, list[StreamState]]:
    """StreamObjects (no client: nothing is sent) that note each state it records."""
    saved: list[StreamState] = []

    async def record(lane: Lane) -> None:
        saved.append(lane.state)

    objects = StreamObjects(None, "logs", retry=RetryPolicy(), s3express=False, metrics=AgentMetrics(),  # type: ignore[arg-type]
                            wall_clock=lambda: NOON, record=record)
    return objects, saved


@pytest.mark.parametrize("taken", [(FILE, 100, 180), (OTHER_FILE, 100, 150)])
async def test_an_append_not_the_one_recorded_first_is_recorded_again_alone_before_it_goes(
        taken: tuple[object, int, int]) -> None:
    """The safety net under ``whole_appends``: other bytes, or the same length of another file's bytes."""
    identity, f0, f1 = taken
    objects, saved = _recording_objects()
    lane = Lane(Route(STREAM, "h", INPUT), recorded())
    batch = Batch(STREAM, 1, identity, f0, (b"x" * (f1 - f0),), f1 - f0, 0.0)  # type: ignore[arg-type]
    lane.retry = ((batch,), batch.parts[0])
    await objects.on_intent(lane, sink_append.Intent("logs", KEY, 1000, f1 - f0))
    assert saved == [lane.state]
    assert lane.state.pending == (Intent(identity, f0, f1, 1000, 1000 + f1 - f0),)  # type: ignore[arg-type]


async def test_the_append_recorded_first_goes_without_a_write() -> None:
    objects, saved = _recording_objects()
    lane = Lane(Route(STREAM, "h", INPUT), recorded())
    batch = Batch(STREAM, 1, FILE, 100, (b"x" * 50,), 50, 0.0)
    lane.retry = ((batch,), batch.parts[0])
    await objects.on_intent(lane, sink_append.Intent("logs", KEY, 1000, 50))
    assert (saved, lane.state) == ([], recorded())
