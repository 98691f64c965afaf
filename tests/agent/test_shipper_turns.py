"""A lane that is behind keeps its turn only while nobody else waits, and never beyond the append rate."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from agent.pacing import TokenBucket
from sink.testing import FakeS3, SeenRequest
from tests.agent.test_shipper import IDLE, lines, shipping


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


async def test_a_lone_stream_behind_keeps_its_turn_at_the_rate(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE  # checkpoint writes run in threads: jump only when truly idle
    fake, appends = _recording()
    data = lines("a", 50)  # 400 bytes: five full appends of 80
    async with shipping(tmp_path, fake, max_bytes=80, rate=10.0, burst=1.0) as h:
        h.add("/logs/a.log")
        start = trio.current_time()
        for i in range(0, len(data), 80):
            await h.send("/logs/a.log", data[i : i + 80])
        await h.shipped("/logs/a.log", len(data))
    assert h.stored("h/logs/a.log") == data
    assert len(appends) == 5
    for n, (_, stamp) in enumerate(appends):  # each append still takes a token (one saved up)
        assert stamp - start >= n / 10.0 - 1e-9


async def test_a_stream_that_starts_waiting_gets_the_next_turn(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE
    fake, appends = _recording()
    busy = lines("a", 60)  # six full appends of 80 bytes
    async with shipping(tmp_path, fake, max_bytes=80, rate=10.0, burst=1.0) as h:
        h.add("/logs/a.log")
        h.add("/logs/b.log")
        for i in range(0, len(busy), 80):
            await h.send("/logs/a.log", busy[i : i + 80])
        with trio.fail_after(5):
            while not appends:
                await trio.testing.wait_all_tasks_blocked()
        await h.send("/logs/b.log", b"b arrives while a is behind\n")
        await h.shipped("/logs/a.log", len(busy))
        await h.shipped("/logs/b.log", 28)
    keys = [key for key, _ in appends]
    assert keys.count("h/logs/a.log") == 6
    assert "h/logs/b.log" in keys[1:3], keys  # right after a's append in progress, not after all of a's
    assert h.stored("h/logs/a.log") == busy


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
