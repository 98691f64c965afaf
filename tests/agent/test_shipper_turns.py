"""A lane that is behind takes no token and keeps its turn while nobody else waits; the others are paced."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing

from agent.batcher import Batch
from agent.pacing import TokenBucket
from agent.turn_order import DISPATCH_GRAIN
from sink.testing import FakeS3, SeenRequest
from tests.agent.test_shipper import FILE, IDLE, lines, shipping


def _recording() -> tuple[FakeS3, list[tuple[str, float]]]:
    """A fake S3 that notes each append's key and virtual time."""
    appends: list[tuple[str, float]] = []
    fake = FakeS3()
    fake.create_bucket("logs")

    def note(request: SeenRequest) -> None:
        if request.op == "append":
            appends.append((request.key, trio.current_time()))

    fake.fault_source = note  # type: ignore[assignment]
    return fake, appends


async def test_a_stream_behind_is_not_paced_and_a_stream_that_is_not_still_is(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE  # checkpoint writes run in threads: jump only when truly idle
    fake, appends = _recording()
    data = lines("a", 50)  # 400 bytes: five full appends of 80, queued at once
    async with shipping(tmp_path, fake, max_bytes=80, rate=10.0, burst=1.0) as h:
        h.add("/logs/a.log")
        h.add("/logs/b.log")
        start = trio.current_time()
        for i in range(0, len(data), 80):
            await h.send("/logs/a.log", data[i : i + 80])
        await h.shipped("/logs/a.log", len(data))
        behind_done = trio.current_time()
        for i in range(3):  # one small batch at a time: each append waits for a token
            await h.send("/logs/b.log", b"b%d\n" % i)
            await h.shipped("/logs/b.log", 3 * (i + 1))
    assert h.stored("h/logs/a.log") == data
    assert behind_done - start < 0.1  # five appends, no waiting for tokens (10 a second, one saved up)
    b_stamps = [stamp for key, stamp in appends if key == "h/logs/b.log"]
    assert len(b_stamps) == 3
    for earlier, later in zip(b_stamps, b_stamps[1:]):
        assert later - earlier >= 0.1 - 1e-9


async def test_a_stream_that_starts_waiting_gets_the_next_turn(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """b's batch arrives as a, six appends behind, sends its first, and no token is left: b waits in line,
    so a's turn ends with that append (a, behind, would need no token) and b's turn is next; then a, still
    behind, goes on beside it.  The test looks at the turns, not at the order of the PUTs, which hangs on
    threads (b's intent goes to disk in one while a goes on)."""
    mock_clock.autojump_threshold = IDLE
    fake, appends = _recording()
    busy = lines("a", 60)  # six full appends of 80 bytes
    async with shipping(tmp_path, fake, max_bytes=80, rate=10.0, burst=1.0) as h:
        h.add("/logs/a.log")
        h.add("/logs/b.log")
        b = h.shipper.lane("/logs/b.log")
        assert b is not None
        b_data = b"b arrives while a is behind\n"
        assert await h.shipper.budget.acquire(len(b_data)) == len(b_data)  # as a tailer takes it before reading
        b_batch = Batch("/logs/b.log", h.generation, FILE, 0, (b_data,), len(b_data), trio.current_time())
        b_turn: list[bool] = []
        a_while_b_waits: list[int] = []
        a_after_b_turn: list[int] = []

        def note(request: SeenRequest) -> None:
            """Counts a's appends while b waits for its turn, and after its turn began; b arrives at a's first."""
            if request.op != "append":
                return
            appends.append((request.key, trio.current_time()))
            if request.key == "h/logs/a.log" and len(appends) == 1:
                h.shipper.order.tokens.take(trio.current_time())  # none left: b has to wait in line for one
                h.shipper.enqueue(b_batch)  # in the middle of a's backlog, whatever the threads' timing
            if request.key == "h/logs/b.log" or b.busy:
                b_turn.append(True)
            if request.key == "h/logs/a.log":
                if b_turn:
                    a_after_b_turn.append(1)
                elif b.has_work:
                    a_while_b_waits.append(1)

        fake.fault_source = note  # type: ignore[assignment]
        for i in range(0, len(busy), 80):
            await h.send("/logs/a.log", busy[i : i + 80])
        await h.shipped("/logs/a.log", len(busy))
        await h.shipped("/logs/b.log", len(b_data))
    keys = [key for key, _ in appends]
    assert keys.count("h/logs/a.log") == 6 and keys.count("h/logs/b.log") == 1
    assert a_after_b_turn, keys  # b's turn came while a was still behind, not after a's backlog
    assert len(a_while_b_waits) <= 1, keys  # at most the append a had under way when b came
    assert h.stored("h/logs/a.log") == busy and h.stored("h/logs/b.log") == b_data


async def test_many_waiting_streams_start_their_turns_in_groups(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    """With many lanes waiting for tokens, one dispatcher wake-up waits for several (``DISPATCH_GRAIN`` of
    the rate) and starts that many turns: one timer per group, not per append; the rate still holds."""
    mock_clock.autojump_threshold = IDLE
    fake, appends = _recording()
    streams = [f"/logs/{n}.log" for n in range(40)]
    rate = 100.0
    per_wake = int(rate * DISPATCH_GRAIN)
    assert per_wake >= 5
    async with shipping(tmp_path, fake, rate=rate, burst=float(per_wake)) as h:
        for stream in streams:
            h.add(stream)
        for stream in streams:
            await h.send(stream, b"x\n")
        for stream in streams:
            await h.shipped(stream, 2)
    stamps = sorted(stamp for _, stamp in appends)
    assert len(stamps) == 40
    groups = sorted(set(round(stamp, 6) for stamp in stamps))
    # one token at a time would give ~31 distinct times; the first group may split while the streams'
    # batches are still arriving (the dispatcher starts what is ready)
    assert len(groups) <= 40 // per_wake + 3, groups
    assert groups[-1] - groups[0] >= (40 - per_wake) / rate - 1e-6  # and no faster than the rate


def test_a_token_bucket_says_when_several_tokens_are_there() -> None:
    bucket = TokenBucket(rate=10.0, burst=4.0)
    assert bucket.ready_at(0.0, 4) == 0.0  # starts full
    for _ in range(4):
        assert bucket.take(0.0)
    assert bucket.ready_at(0.0, 3) == pytest.approx(0.3)
    assert bucket.ready_at(0.0, 10) == pytest.approx(0.4)  # never more than the burst


def test_a_token_bucket_never_asks_to_wait_until_now_without_a_token() -> None:
    """Float refills once left 0.9999999999999998 tokens at the time ``ready_at`` named: the dispatcher spun."""
    bucket = TokenBucket(rate=10.0, burst=1.0)
    now, granted = 0.0, 0
    for _ in range(1000):
        if bucket.take(now):
            granted += 1
        else:
            later = bucket.ready_at(now)
            assert later > now
            now = later
        if granted == 50:
            break
    assert granted == 50 and abs(now - 4.9) < 1e-6  # one saved up, then the rate exactly
