"""The shipper against sink.testing.FakeS3: exactly once, intents first, pacing, roll-over, trouble.

Batches are made by hand (the tailer and batcher have their own tests); the
objects are read back from the fake and compared byte for byte, and the
checkpoint is read from disk, as a restarted agent would.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from agent.batcher import Batch
from agent.checkpoint import Intent, StreamState, load_states, open_checkpoint, write_states
from agent.config import InputConfig, RollConfig
from agent.fingerprint import identity_of
from agent.lanes import Route
from agent.pacing import ObjectSoFar, TokenBucket, index_under, part_key, period_of, roll_target
from agent.router import parse_template
from agent.shipper import REFUSAL_PAUSE, Shipper
from agent.tailer import ReadAheadBudget
from sink.client import S3Client
from sink.retry import RetryPolicy
from sink.testing import Fault, FakeS3, SeenRequest

DEADLINE = 20
FILE = identity_of(2049, 77, b"first line of the log\n")
OTHER_FILE = identity_of(2049, 78, b"another file\n")
FAST_RETRY = RetryPolicy(base=0.001, cap=0.01, max_attempts=None, max_elapsed=float("inf"))
INPUT = InputConfig(index=0, paths=("/logs/*.log",), key=parse_template("{host}/{path}"))
NOON = datetime(2030, 5, 17, 12, 0, tzinfo=timezone.utc)
# Virtual time (MockClock) jumps ahead only after this much real idle time: checkpoint writes
# happen in worker threads, and a jump while one runs would look like a long stall -- or, with
# no other timer due, jump straight to a test's deadline.  0.05 s failed once in a loaded CI
# run (an fdatasync under 3 test workers' disk load can take longer); 0.5 s costs ~4 s in all.
IDLE = 0.5


def lines(tag: str, count: int, start: int = 0) -> bytes:
    return b"".join(b"%s %05d\n" % (tag.encode(), i) for i in range(start, start + count))


class Harness:
    """A shipper on a fake S3 with a checkpoint in ``tmp_path``; ``send`` plays the tailers' part."""

    def __init__(self, shipper: Shipper, fake: FakeS3, state_dir: Path, send: trio.MemorySendChannel[Batch]) -> None:
        self.shipper = shipper
        self.fake = fake
        self.state_dir = state_dir
        self._send = send
        self.offsets: dict[tuple[str, int], int] = {}
        self.generation = 1

    def route(self, stream: str, **input_options: Any) -> Route:
        return Route(stream, "h", replace(INPUT, **input_options))

    def add(self, stream: str, state: StreamState | None = None, **input_options: Any) -> None:
        route = self.route(stream, **input_options)
        self.shipper.add_stream(route, state or StreamState(stream, route.base_key(NOON), FILE, 0))

    async def send(self, stream: str, data: bytes, *, identity=FILE, generation: int | None = None) -> None:
        """One batch of ``data``, continuing the stream's file (after the budget is taken, as a tailer does)."""
        generation = generation or self.generation
        offset = self.offsets.get((stream, generation), 0)
        taken = 0
        while taken < len(data):
            taken += await self.shipper.budget.acquire(len(data) - taken)
        await self._send.send(Batch(stream, generation, identity, offset, (data,), len(data), trio.current_time()))
        self.offsets[(stream, generation)] = offset + len(data)

    def stored(self, key: str) -> bytes | None:
        return self.fake.object_bytes("logs", key)

    def on_disk(self) -> dict[str, StreamState]:
        return load_states(self.state_dir)

    async def shipped(self, stream: str, offset: int) -> None:
        lane = self.shipper.lane(stream)
        assert lane is not None
        with trio.fail_after(DEADLINE):
            await self.shipper.wait_for(lambda: lane.failed is not None or (lane.state.offset >= offset and lane.idle))


@asynccontextmanager
async def shipping(tmp_path: Path, fake: FakeS3 | None = None, *, budget: int = 1 << 20, **options: Any) -> AsyncIterator[Harness]:
    """Run a shipper until the block ends; then its input closes and it drains."""
    if fake is None:
        fake = FakeS3()
        fake.create_bucket("logs")
    options.setdefault("max_bytes", 1 << 20)
    options.setdefault("max_in_flight", 4)
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("wall_clock", lambda: NOON)
    async with open_checkpoint(tmp_path / "state") as checkpoint, httpx.AsyncClient(transport=fake) as http:
        client = S3Client(http, "http://s3.test", addressing="path")
        shipper = Shipper(checkpoint, client, "logs", ReadAheadBudget(budget), **options)
        send, receive = trio.open_memory_channel[Batch](1000)
        async with trio.open_nursery() as nursery:
            await nursery.start(shipper.run, receive)
            async with send:
                yield Harness(shipper, fake, tmp_path / "state", send)


# -- exactly once ----------------------------------------------------------------------------


async def test_batches_become_objects_byte_for_byte_and_progress_is_durable(tmp_path: Path) -> None:
    a, b = lines("a", 300), lines("b", 200)
    async with shipping(tmp_path) as h:
        h.add("/logs/a.log")
        h.add("/logs/b.log")
        for i in range(0, len(a), 700):
            await h.send("/logs/a.log", a[i : i + 700])
        for i in range(0, len(b), 500):
            await h.send("/logs/b.log", b[i : i + 500])
    assert h.stored("h/logs/a.log") == a and h.stored("h/logs/b.log") == b
    states = h.on_disk()
    assert states["/logs/a.log"] == StreamState("/logs/a.log", "h/logs/a.log", FILE, len(a), len(a), None)
    assert states["/logs/b.log"].offset == len(b) and states["/logs/b.log"].intent is None
    assert h.shipper.budget.in_use == 0  # every byte acknowledged gave its budget back
    assert h.shipper.metrics.shipped_bytes._value.get() == len(a) + len(b)


async def test_the_intent_is_on_disk_before_each_put(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    fake = FakeS3()
    fake.create_bucket("logs")
    state_dir = tmp_path / "state"

    def check(request: SeenRequest) -> None:
        if request.op == "append":
            state = load_states(state_dir)["/logs/a.log"]
            offset = int(request.headers["x-amz-write-offset-bytes"])
            recorded = {(i.r0, i.r1): i for i in (state.intent, state.next_intent) if i is not None}
            intent = recorded.get((offset, offset + len(request.body)))  # the next one may be recorded ahead
            assert intent is not None, "a PUT went out with no intent on disk"
            seen.append((intent.f0, intent.f1))
        return None

    fake.fault_source = check  # type: ignore[assignment]
    data = lines("x", 100)
    async with shipping(tmp_path, fake, max_bytes=400) as h:
        h.add("/logs/a.log")
        for i in range(0, len(data), 200):
            await h.send("/logs/a.log", data[i : i + 200])
    assert h.stored("h/logs/a.log") == data
    assert seen[0][0] == 0 and seen[-1][1] == len(data) and all(x[1] == y[0] for x, y in zip(seen, seen[1:]))


async def test_an_append_whose_answer_was_lost_is_reconciled_not_sent_twice(tmp_path: Path) -> None:
    data = lines("y", 50)
    async with shipping(tmp_path) as h:
        h.fake.inject(Fault.DROP_RESPONSE, Fault.INTERNAL_ERROR, Fault.RESET_BEFORE)
        h.add("/logs/a.log")
        await h.send("/logs/a.log", data[:300])
        await h.shipped("/logs/a.log", 300)
        await h.send("/logs/a.log", data[300:])
    assert h.stored("h/logs/a.log") == data
    assert h.shipper.metrics.retries._value.get() >= 3


@pytest.mark.parametrize("landed", [True, False])
async def test_an_intent_found_at_start_is_settled_by_head(tmp_path: Path, landed: bool) -> None:
    before, body = lines("old", 10), lines("new", 5)
    fake = FakeS3()
    fake.create_bucket("logs")
    fake.foreign_append("logs", "h/logs/a.log", before + (body if landed else b""))
    intent = Intent(FILE, len(before), len(before) + len(body), len(before), len(before) + len(body))
    (tmp_path / "state").mkdir()
    write_states(tmp_path / "state", {"/logs/a.log": StreamState("/logs/a.log", "h/logs/a.log", FILE, len(before), len(before), intent)})
    async with shipping(tmp_path, fake) as h:
        h.add("/logs/a.log", h.shipper.checkpoint.get("/logs/a.log"))
        state = await h.shipper.resolve("/logs/a.log")
        assert state is not None and state.intent is None
        assert state.offset == (len(before) + len(body) if landed else len(before))
        if not landed:  # the tailer reads the bytes again from the state's offset
            h.offsets[("/logs/a.log", 1)] = len(before)
            await h.send("/logs/a.log", body)
    assert h.stored("h/logs/a.log") == before + body
    assert h.on_disk()["/logs/a.log"].intent is None


async def test_a_foreign_append_stops_that_stream_only(tmp_path: Path) -> None:
    failed: list[str] = []
    async with shipping(tmp_path, on_failed=failed.append) as h:
        h.add("/logs/a.log")
        h.add("/logs/b.log")
        await h.send("/logs/a.log", b"ours\n")
        await h.shipped("/logs/a.log", 5)
        h.fake.foreign_append("logs", "h/logs/a.log", b"FOREIGN\n")
        await h.send("/logs/a.log", b"more\n")
        await h.send("/logs/b.log", b"unaffected\n")
        await h.shipped("/logs/a.log", 10)
        await h.shipped("/logs/b.log", 11)
        await h.send("/logs/a.log", b"after the conflict\n")  # dropped, its budget returned
    assert failed == ["/logs/a.log"]
    assert h.stored("h/logs/a.log") == b"ours\nFOREIGN\n"
    assert h.stored("h/logs/b.log") == b"unaffected\n"
    assert h.shipper.metrics.conflicts._value.get() == 1
    assert h.shipper.budget.in_use == 0
    assert h.on_disk()["/logs/a.log"].offset == 5


async def test_a_batch_that_skips_bytes_stops_the_stream(tmp_path: Path) -> None:
    async with shipping(tmp_path) as h:
        h.add("/logs/a.log")
        await h.send("/logs/a.log", b"one\n")
        await h.shipped("/logs/a.log", 4)
        h.offsets[("/logs/a.log", 1)] += 10  # a gap: a bug upstream must not become a hole in the object
        await h.send("/logs/a.log", b"two\n")
    assert h.shipper.lane("/logs/a.log").failed is not None  # type: ignore[union-attr]
    assert h.stored("h/logs/a.log") == b"one\n"


async def test_a_new_file_continues_the_same_object(tmp_path: Path) -> None:
    async with shipping(tmp_path) as h:
        h.add("/logs/a.log")
        await h.send("/logs/a.log", b"old file\n")
        await h.send("/logs/a.log", b"new file\n", identity=OTHER_FILE, generation=2)
    assert h.stored("h/logs/a.log") == b"old file\nnew file\n"
    assert h.on_disk()["/logs/a.log"] == StreamState("/logs/a.log", "h/logs/a.log", OTHER_FILE, 9, 18, None)


# -- roll-over and compression ---------------------------------------------------------------


async def test_roll_over_by_size_moves_to_part_keys(tmp_path: Path) -> None:
    data = lines("r", 100)  # 800 bytes
    async with shipping(tmp_path, max_bytes=200) as h:
        h.add("/logs/a.log", roll=RollConfig(max_bytes=300))
        for i in range(0, len(data), 100):
            await h.send("/logs/a.log", data[i : i + 100])
            await h.shipped("/logs/a.log", i + 100)
    keys = ["h/logs/a.log", "h/logs/a.log.part1", "h/logs/a.log.part2"]
    assert [len(h.stored(k) or b"") for k in keys] == [300, 300, 200]
    assert b"".join(h.stored(k) or b"" for k in keys) == data
    assert h.on_disk()["/logs/a.log"].key == "h/logs/a.log.part2"


async def test_roll_over_by_calendar_day_and_by_appends(tmp_path: Path) -> None:
    now = [NOON]
    async with shipping(tmp_path, wall_clock=lambda: now[0]) as h:
        h.add("/logs/d.log", roll=RollConfig(every="day"))
        h.add("/logs/n.log", roll=RollConfig(max_appends=2))
        for day in (17, 17, 18):
            now[0] = NOON.replace(day=day)
            await h.send("/logs/d.log", b"day %d\n" % day)
            await h.send("/logs/n.log", b"append\n")
            await h.shipped("/logs/d.log", h.offsets[("/logs/d.log", 1)])
            await h.shipped("/logs/n.log", h.offsets[("/logs/n.log", 1)])
    assert h.stored("h/logs/d.log") == b"day 17\nday 17\n" and h.stored("h/logs/d.log.part1") == b"day 18\n"
    assert h.stored("h/logs/n.log") == b"append\n" * 2 and h.stored("h/logs/n.log.part1") == b"append\n"


async def test_a_dated_key_moves_at_midnight_and_skips_a_target_that_holds_data(tmp_path: Path) -> None:
    now = [NOON]
    fake = FakeS3()
    fake.create_bucket("logs")
    fake.foreign_append("logs", "2030-05-18/a.log", b"someone else's\n")
    dated = parse_template("{date:%Y-%m-%d}/{name}")
    async with shipping(tmp_path, fake, wall_clock=lambda: now[0]) as h:
        route = h.route("/logs/a.log", key=dated)
        h.shipper.add_stream(route, StreamState("/logs/a.log", route.base_key(NOON), FILE, 0))
        await h.send("/logs/a.log", b"on the 17th\n")
        await h.shipped("/logs/a.log", 12)
        now[0] = NOON.replace(day=18)
        await h.send("/logs/a.log", b"on the 18th\n")
    assert h.stored("2030-05-17/a.log") == b"on the 17th\n"
    assert h.stored("2030-05-18/a.log") == b"someone else's\n"  # never appended to
    assert h.stored("2030-05-18/a.log.part1") == b"on the 18th\n"


async def test_the_server_refusing_more_appends_rolls_the_object(tmp_path: Path) -> None:
    fake = FakeS3(max_appends=2)
    fake.create_bucket("logs")
    async with shipping(tmp_path, fake) as h:
        h.add("/logs/a.log")
        for i in range(5):
            await h.send("/logs/a.log", b"line %d\n" % i)
            await h.shipped("/logs/a.log", 7 * (i + 1))
    parts = [h.stored(k) for k in ("h/logs/a.log", "h/logs/a.log.part1", "h/logs/a.log.part2")]
    assert b"".join(p or b"" for p in parts) == b"".join(b"line %d\n" % i for i in range(5))
    assert h.on_disk()["/logs/a.log"].key == "h/logs/a.log.part2"


async def test_gzip_members_decompress_to_the_log(tmp_path: Path) -> None:
    data = lines("z", 500)
    async with shipping(tmp_path) as h:
        h.add("/logs/a.log", compression="gzip")
        for i in range(0, len(data), 1000):
            await h.send("/logs/a.log", data[i : i + 1000])
            await h.shipped("/logs/a.log", min(len(data), i + 1000))
    stored = h.stored("h/logs/a.log") or b""
    assert gzip.decompress(stored) == data
    assert h.on_disk()["/logs/a.log"].object_length == len(stored)


# -- pacing and bounds --------------------------------------------------------------------------


class Held(httpx.AsyncBaseTransport):
    """Holds every append until ``release``; counts how many are held at once."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.gate = trio.Event()
        self.held = 0
        self.most = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            self.held += 1
            self.most = max(self.most, self.held)
            await self.gate.wait()
            self.held -= 1
        return await self.inner.handle_async_request(request)


async def test_requests_in_flight_are_bounded_and_their_intents_share_writes(tmp_path: Path) -> None:
    fake = FakeS3()
    fake.create_bucket("logs")
    held = Held(fake)
    async with open_checkpoint(tmp_path / "state") as checkpoint, httpx.AsyncClient(transport=held) as http:
        shipper = Shipper(checkpoint, S3Client(http, "http://s3.test", addressing="path"), "logs",
                          ReadAheadBudget(1 << 20), max_bytes=1 << 20, max_in_flight=8, retry=FAST_RETRY)
        send, receive = trio.open_memory_channel[Batch](100)
        async with trio.open_nursery() as nursery:
            await nursery.start(shipper.run, receive)
            for i in range(20):
                shipper.add_stream(Route(f"/logs/{i}.log", "h", INPUT), StreamState(f"/logs/{i}.log", f"k{i}", FILE, 0))
                shipper.budget._available -= 5  # what a tailer's acquire does
                await send.send(Batch(f"/logs/{i}.log", 1, FILE, 0, (b"line\n",), 5, 0.0))
            with trio.fail_after(DEADLINE):
                while held.held < 8:
                    await trio.testing.wait_all_tasks_blocked()
            await trio.testing.wait_all_tasks_blocked()
            assert held.held == 8  # and no more
            intents = [s for s in load_states(tmp_path / "state").values() if s.intent is not None]
            assert len(intents) >= 8  # the held ones, and maybe turns waiting for a slot
            assert checkpoint.writes * 2 <= len(intents)  # intents share writes (group commit)
            held.gate.set()
            await send.aclose()
    assert held.most == 8 and fake.count("append") == 20
    assert checkpoint.writes < 20  # fewer writes than appends: intents and results travel together


async def test_appends_are_paced_and_a_waiting_stream_coalesces(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE  # checkpoint writes run in threads: jump only when truly idle
    stamps: list[float] = []
    fake = FakeS3()
    fake.create_bucket("logs")
    fake.fault_source = lambda r: stamps.append(trio.current_time()) if r.op == "append" else None  # type: ignore[assignment,func-returns-value]
    async with shipping(tmp_path, fake, rate=10.0, burst=1.0) as h:
        h.add("/logs/a.log")
        h.add("/logs/b.log")
        start = trio.current_time()
        for i in range(20):  # 20 small batches each, all at once
            await h.send("/logs/a.log", b"a%02d\n" % i)
            await h.send("/logs/b.log", b"b%02d\n" % i)
        await h.shipped("/logs/a.log", 80)
        await h.shipped("/logs/b.log", 80)
    assert h.stored("h/logs/a.log") == b"".join(b"a%02d\n" % i for i in range(20))
    assert len(stamps) < 10  # 40 batches, a handful of appends
    for n, stamp in enumerate(stamps):  # never faster than the rate allows (one saved-up token)
        assert stamp - start >= (n - 1) / 10.0 - 1e-9


async def test_a_refused_stream_waits_and_tries_again(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = IDLE
    fake = FakeS3()  # no bucket yet: NoSuchBucket
    async with shipping(tmp_path, fake) as h:
        h.add("/logs/a.log")
        await h.send("/logs/a.log", b"waiting for a bucket\n")
        lane = h.shipper.lane("/logs/a.log")
        with trio.fail_after(DEADLINE):
            await h.shipper.wait_for(lambda: lane is not None and lane.blocked)
        assert not h.shipper.health.ready and "NoSuchBucket" in h.shipper.health.reason
        assert lane is not None and lane.state.intent is None  # refused outright: nothing landed
        fake.create_bucket("logs")
        refused_at = trio.current_time()
        await h.shipped("/logs/a.log", 21)
        assert trio.current_time() - refused_at >= REFUSAL_PAUSE - 0.01
    assert h.stored("h/logs/a.log") == b"waiting for a bucket\n"
    assert h.shipper.health.refusal is None


# -- the pure rules (agent.pacing) ------------------------------------------------------------


def test_token_bucket_grants_the_rate_and_saves_up_a_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.ready_at(0.0) == pytest.approx(0.1)
    assert not bucket.take(0.05) and bucket.take(0.1)
    assert [bucket.take(10.0) for _ in range(3)] == [True, True, False]  # a long pause saves up only ``burst``


def test_part_keys_are_recognised_only_under_their_base() -> None:
    assert part_key("h/app.log", 0) == "h/app.log" and part_key("h/app.log", 3) == "h/app.log.part3"
    assert index_under("h/app.log.part3", "h/app.log") == 3
    assert index_under("h/app.log", "h/app.log") == 0
    assert index_under("h/x.part3", "h/x.part3") == 0  # a log file named like a part is its own base
    assert index_under("h/app.log.part03", "h/app.log") is None
    assert index_under("h/other.log", "h/app.log") is None


@pytest.mark.parametrize(
    ("roll", "current", "base", "period", "body", "expected"),
    [
        (RollConfig(max_bytes=100), ObjectSoFar("k", 0, 0, None), "k", None, 500, None),  # an empty object takes any body
        (RollConfig(max_bytes=100), ObjectSoFar("k", 60, 1, None), "k", None, 40, None),
        (RollConfig(max_bytes=100), ObjectSoFar("k", 60, 1, None), "k", None, 41, ("k.part1", "max_bytes")),
        (RollConfig(max_appends=2), ObjectSoFar("k.part4", 9, 2, None), "k", None, 1, ("k.part5", "max_appends")),
        (RollConfig(every="day"), ObjectSoFar("k", 9, 1, "2030-05-17"), "k", "2030-05-18", 1, ("k.part1", "every")),
        (RollConfig(), ObjectSoFar("2030/05/17/k.part2", 9, 1, None), "2030/05/18/k", None, 1, ("2030/05/18/k", "key_changed")),
        (RollConfig(), ObjectSoFar("k", 10**12, 10**6, None), "k", None, 1, None),  # no limits: never
    ],
)
def test_roll_target(roll: RollConfig, current: ObjectSoFar, base: str, period: str | None, body: int,
                     expected: tuple[str, str] | None) -> None:
    assert roll_target(roll, current, base, period, body) == expected


def test_period_of_is_utc() -> None:
    late = datetime(2030, 5, 17, 23, 30, tzinfo=timezone(timedelta(hours=-2)))  # already the 18th in UTC
    assert period_of(late, "day") == "2030-05-18" and period_of(late, "hour") == "2030-05-18T01"
    assert period_of(late, None) is None
