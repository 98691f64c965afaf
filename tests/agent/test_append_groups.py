"""Many streams' appends in one AppendObjects request (``agent.append_groups``), against FakeS3.

Groups form when several lanes' turns start at once; a paced shipper (few
tokens, many streams) makes them.  Every test compares the objects with what
was sent, byte for byte: a group changes how appends travel, never what lands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing
from structlog.testing import capture_logs

from agent import events
from agent.batcher import Batch
from sink.testing import Fault, FakeS3
from tests.agent.test_shipper import FILE, IDLE, Harness, shipping

STREAMS = [f"/logs/s{i:02d}.log" for i in range(12)]


def line(stream: str, n: int) -> bytes:
    return b"%s line %03d\n" % (stream.encode(), n)


async def _send_round(h, n: int) -> None:
    """Line ``n`` of every stream, handed over with no task switch in between (as one round of reads
    does): every lane waits when the dispatcher next looks, so their turns start together."""
    data = {stream: line(stream, n) for stream in STREAMS}
    for stream in STREAMS:
        await h.shipper.budget.acquire(len(data[stream]))
    for stream in STREAMS:
        offset = h.offsets.get((stream, 1), 0)
        h.shipper.enqueue(Batch(stream, 1, FILE, offset, (data[stream],), len(data[stream]), trio.current_time()))
        h.offsets[(stream, 1)] = offset + len(data[stream])


async def _write_rounds(h, rounds: int, start: int = 0) -> None:
    """Round after round, each shipped before the next."""
    for n in range(start, rounds):
        await _send_round(h, n)
        for stream in STREAMS:
            await h.shipped(stream, (n + 1) * len(line(stream, 0)))


def _expected(stream: str, rounds: int) -> bytes:
    return b"".join(line(stream, n) for n in range(rounds))


def _fake(**options) -> FakeS3:
    fake = FakeS3(**options)
    fake.create_bucket("logs")
    return fake


@asynccontextmanager
async def many_streams(tmp_path: Path, fake: FakeS3, **options: Any) -> AsyncIterator[Harness]:
    """A shipper with every stream of STREAMS added; tokens for a group of ten at a time."""
    async with shipping(tmp_path, fake, rate=100.0, burst=64.0, **options) as h:
        for stream in STREAMS:
            h.add(stream)
        yield h


def _all_exact(h: Harness, rounds: int, but: str | None = None) -> None:
    for stream in STREAMS:
        if stream != but:
            assert h.stored(f"h{stream}") == _expected(stream, rounds)


async def test_waiting_streams_share_requests_and_every_object_is_exact(tmp_path: Path,
                                                                       mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE
    fake = _fake()
    async with many_streams(tmp_path, fake) as h:
        await _write_rounds(h, 5)
    _all_exact(h, 5)
    assert fake.count("append_objects") >= 1
    assert fake.count("append_objects") + fake.count("append") < 5 * len(STREAMS)  # fewer requests than appends
    states = h.on_disk()
    assert all(states[s].intent is None and states[s].object_length == len(_expected(s, 5)) for s in STREAMS)


async def test_a_sink_without_append_objects_turns_groups_off_and_loses_nothing(
        tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE
    fake = _fake(append_objects=False)
    with capture_logs() as logs:
        async with many_streams(tmp_path, fake) as h:
            await _write_rounds(h, 4)
    _all_exact(h, 4)
    assert fake.count("append_objects") == 1  # refused once (405), then one PUT per append
    assert [e["status"] for e in logs if e["event"] == events.APPEND_GROUPS_OFF] == [405]


async def test_append_objects_off_never_tries_it(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE
    fake = _fake()
    async with many_streams(tmp_path, fake, append_groups=False) as h:  # sink.append_objects: off
        await _write_rounds(h, 3)
    _all_exact(h, 3)
    assert fake.count("append_objects") == 0 and fake.count("append") == 3 * len(STREAMS)


async def test_a_lost_answer_is_settled_by_head_and_nothing_lands_twice(tmp_path: Path,
                                                                         mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE
    fake = _fake()
    async with many_streams(tmp_path, fake) as h:
        await _write_rounds(h, 1)  # the first appends open the writers, one PUT each
        grouped = fake.count("append_objects")
        fake.inject(Fault.DROP_RESPONSE, op="append", key=f"h{STREAMS[3]}")  # applied, answer lost: ambiguous for all
        fake.inject(Fault.INTERNAL_ERROR, op="append", key=f"h{STREAMS[5]}")  # this item alone: 500, not applied
        fake.inject(Fault.RESET_BEFORE, op="append", key=f"h{STREAMS[7]}")  # the whole request: nothing applied
        heads = fake.count("head")
        await _write_rounds(h, 6, start=1)
    _all_exact(h, 6)
    assert fake.count("append_objects") > grouped and "queued_faults=0" in repr(fake)  # each fault met a group
    assert fake.count("head") > heads  # the ambiguous ones were looked for before being sent again


async def test_a_foreign_writer_in_a_group_stops_only_its_stream(tmp_path: Path,
                                                                 mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE
    fake = _fake()
    victim = STREAMS[2]
    async with many_streams(tmp_path, fake) as h:
        await _write_rounds(h, 1)
        fake.inject(Fault.FOREIGN_APPEND, op="append", key=f"h{victim}")
        await _write_rounds(h, 3, start=1)
        assert fake.count("append_objects") >= 1 and "queued_faults=0" in repr(fake)
        lane = h.shipper.lane(victim)
        assert lane is not None and lane.failed is not None
    assert fake.object_bytes("logs", f"h{victim}").count(fake.foreign_bytes) == 1  # never overwritten
    assert h.stored(f"h{victim}") == line(victim, 0) + fake.foreign_bytes  # nothing of ours after it
    _all_exact(h, 3, but=victim)
