"""Roll-over: by bytes, by appends, by age, and when the server says TooManyParts."""

from __future__ import annotations

import random

import httpx
import pytest
import trio
import trio.testing

from sink.append import S3EXPRESS_MAX_APPENDS, ObjectWriter, RollOverPolicy
from sink.client import S3Client
from sink.errors import ConfigError, ConflictError, ObjectTooLarge, RollOverRequired, TooManyAppends
from sink.retry import RetryPolicy
from sink.testing import FakeS3, Fault

BUCKET = "logs"


def numbered(index: int) -> str:
    return f"app.{index:04d}.log"


def setup(fake: FakeS3 | None = None, **kw: object) -> tuple[FakeS3, ObjectWriter]:
    fake = fake or FakeS3()
    fake.create_bucket(BUCKET)
    client = S3Client(httpx.AsyncClient(transport=fake), "http://127.0.0.1:9000")
    kw.setdefault("next_key", numbered)
    kw.setdefault("retry", RetryPolicy(base=0.1, max_attempts=40))
    writer = ObjectWriter(client, BUCKET, numbered(0), **kw)  # type: ignore[arg-type]
    return fake, writer


def objects(fake: FakeS3) -> dict[str, bytes]:
    return {k: bytes(v.data) for k, v in sorted(fake.buckets[BUCKET].items())}


async def test_roll_by_bytes(autojump_clock: trio.testing.MockClock) -> None:
    fake, writer = setup(roll=RollOverPolicy(max_bytes=10))
    for chunk in (b"aaaa", b"bbbb", b"cccc", b"dd", b"e" * 15, b"f"):
        await writer.append(chunk)
    # A body that does not fit goes to a new object; one bigger than the limit gets an object to itself.
    assert objects(fake) == {
        "app.0000.log": b"aaaabbbb",
        "app.0001.log": b"ccccdd",
        "app.0002.log": b"e" * 15,
        "app.0003.log": b"f",
    }
    assert (writer.key, writer.index, writer.offset) == ("app.0003.log", 3, 1)


async def test_roll_by_appends(autojump_clock: trio.testing.MockClock) -> None:
    fake, writer = setup(roll=RollOverPolicy(max_appends=3))
    for i in range(7):
        await writer.append(b"%d" % i)
    assert objects(fake) == {"app.0000.log": b"012", "app.0001.log": b"345", "app.0002.log": b"6"}


async def test_roll_by_age_on_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    fake, writer = setup(roll=RollOverPolicy(max_age=60.0))
    await writer.append(b"a")
    await trio.sleep(59.0)
    await writer.append(b"b")
    await trio.sleep(1.0)
    await writer.append(b"c")  # the object is now 60 s old
    assert objects(fake) == {"app.0000.log": b"ab", "app.0001.log": b"c"}


async def test_roll_when_the_server_says_too_many_parts(autojump_clock: trio.testing.MockClock) -> None:
    fake, writer = setup(FakeS3(max_appends=4, offset_error="InvalidWriteOffset"), s3express=True)
    sent = b"".join(b"<%d>" % i for i in range(10))
    for i in range(10):
        await writer.append(b"<%d>" % i)
    assert objects(fake) == {
        "app.0000.log": b"<0><1><2><3>",
        "app.0001.log": b"<4><5><6><7>",
        "app.0002.log": b"<8><9>",
    }
    assert b"".join(objects(fake).values()) == sent


async def test_roll_through_faults_keeps_an_exact_copy(autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(3)
    fake, writer = setup(FakeS3(max_appends=7), roll=RollOverPolicy(max_bytes=200), rand=rng.random)
    kinds = [Fault.DROP_RESPONSE, Fault.RESET_BEFORE, Fault.SLOW_DOWN, Fault.INTERNAL_ERROR]
    fake.fault_source = lambda seen: rng.choice(kinds) if rng.random() < 0.25 else None
    sent = bytearray()
    for i in range(120):
        chunk = b"%d," % i * rng.randrange(1, 6)
        await writer.append(chunk)
        sent += chunk
    stored = objects(fake)
    assert b"".join(stored.values()) == bytes(sent)
    assert len(stored) > 5 and all(len(v) <= 200 for v in stored.values())


async def test_a_fresh_object_refusing_appends_stops_the_rolling(autojump_clock: trio.testing.MockClock) -> None:
    fake, writer = setup(FakeS3(max_appends=1))
    fake.foreign_append(BUCKET, "app.0001.log", b"")  # exists, empty, but already at the server's limit
    await writer.append(b"a")
    with pytest.raises(TooManyAppends):
        await writer.append(b"b")
    assert writer.key == "app.0001.log" and fake.count("append") == 3


async def test_roll_target_with_data_is_a_conflict(autojump_clock: trio.testing.MockClock) -> None:
    fake, writer = setup(roll=RollOverPolicy(max_appends=1))
    fake.foreign_append(BUCKET, "app.0001.log", b"someone else")
    await writer.append(b"a")
    with pytest.raises(ConflictError, match="app.0001.log"):
        await writer.append(b"b")


async def test_without_next_key_the_caller_is_told_to_roll(autojump_clock: trio.testing.MockClock) -> None:
    _, by_bytes = setup(roll=RollOverPolicy(max_bytes=4), next_key=None)
    await by_bytes.append(b"abc")
    with pytest.raises(ObjectTooLarge):
        await by_bytes.append(b"de")
    _, by_parts = setup(FakeS3(max_appends=1), next_key=None)
    await by_parts.append(b"abc")
    with pytest.raises(TooManyAppends):
        await by_parts.append(b"de")
    assert by_parts.pending is None and by_parts.offset == 3  # nothing is left uncertain
    _, by_age = setup(roll=RollOverPolicy(max_age=1.0), next_key=None)
    await by_age.append(b"a")
    await trio.sleep(1.0)
    with pytest.raises(RollOverRequired):
        await by_age.append(b"b")


def test_s3express_defaults_to_its_append_limit() -> None:
    _, writer = setup(s3express=True)
    assert writer.roll.max_appends == S3EXPRESS_MAX_APPENDS == 10_000
    _, custom = setup(s3express=True, roll=RollOverPolicy(max_appends=500))
    assert custom.roll.max_appends == 500
    _, plain = setup()
    assert plain.roll.max_appends is None


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ConfigError):
        RollOverPolicy(max_bytes=0)
