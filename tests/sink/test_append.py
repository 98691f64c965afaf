"""ObjectWriter against FakeS3: exactly once through every fault, conflicts, resume."""

from __future__ import annotations

import random
from collections import Counter

import httpx
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from sink.append import Intent, ObjectWriter, Reconciled
from sink.client import S3Client
from sink.errors import AppendPending, ConflictError, TransportError
from sink.retry import RetryPolicy
from sink.testing import FakeS3, Fault

BUCKET = "logs"
FAULTS = [Fault.DROP_RESPONSE, Fault.RESET_BEFORE, Fault.SLOW_DOWN, Fault.INTERNAL_ERROR]


def new_fake(**kw: object) -> FakeS3:
    fake = FakeS3(**kw)  # type: ignore[arg-type]
    fake.create_bucket(BUCKET)
    return fake


def writer_for(fake: FakeS3, key: str = "host/app.log", **kw: object) -> ObjectWriter:
    client = S3Client(httpx.AsyncClient(transport=fake), "http://127.0.0.1:9000")
    kw.setdefault("retry", RetryPolicy(base=0.1, cap=2.0, max_attempts=40))
    kw.setdefault("rand", random.Random(1).random)
    return ObjectWriter(client, BUCKET, key, **kw)  # type: ignore[arg-type]


async def test_appends_extend_the_object(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake()
    writer = writer_for(fake)
    assert await writer.open() == 0
    assert await writer.append(b"one\n") == 4
    assert await writer.append(b"two\n") == 8
    assert await writer.append(b"") == 8  # nothing to send
    assert fake.object_bytes(BUCKET, "host/app.log") == b"one\ntwo\n"
    assert fake.count("append") == 2 and fake.count("head") == 1
    assert "offset=8 appends=2 pending=None" in repr(writer)


async def test_open_continues_an_existing_object(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake()
    fake.foreign_append(BUCKET, "k", b"earlier run\n")
    writer = writer_for(fake, "k")
    assert await writer.append(b"more\n") == 17  # opens implicitly
    assert fake.object_bytes(BUCKET, "k") == b"earlier run\nmore\n"


async def test_lost_answer_is_reconciled_as_landed_without_resending(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake()
    writer = writer_for(fake)
    await writer.append(b"a")
    fake.inject(Fault.DROP_RESPONSE)
    with capture_logs() as logs:
        assert await writer.append(b"bb") == 3
    assert fake.object_bytes(BUCKET, "host/app.log") == b"abb"
    assert fake.count("append") == 2  # the lost one was not sent again
    assert {"event": "append_reconciled", "verdict": "landed"}.items() <= logs[-1].items()


@pytest.mark.parametrize("fault", [Fault.RESET_BEFORE, Fault.SLOW_DOWN, Fault.INTERNAL_ERROR])
async def test_unapplied_failures_are_sent_again_after_a_backoff(
    fault: Fault, autojump_clock: trio.testing.MockClock
) -> None:
    fake = new_fake()
    writer = writer_for(fake, retry=RetryPolicy(base=0.5, cap=4.0, max_attempts=5), rand=lambda: 1.0)
    await writer.append(b"a")
    fake.inject(fault, fault)
    start = trio.current_time()
    assert await writer.append(b"bb") == 3
    assert trio.current_time() - start == 0.5 + 1.0  # two full-jitter waits at rand=1.0
    assert fake.object_bytes(BUCKET, "host/app.log") == b"abb"
    assert fake.count("append") == 4 and fake.count("head") == 3  # open + one reconcile per failure


async def test_foreign_writer_in_between_is_a_conflict(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake()
    writer = writer_for(fake)
    await writer.append(b"mine\n")
    fake.foreign_append(BUCKET, "host/app.log", b"theirs\n")
    with pytest.raises(ConflictError) as info:
        await writer.append(b"again\n")
    assert (info.value.key, info.value.actual) == ("host/app.log", 12)
    assert fake.object_bytes(BUCKET, "host/app.log") == b"mine\ntheirs\n"  # never overwritten
    with pytest.raises(ConflictError):
        await writer.append(b"later\n")  # the writer stays stopped


async def test_foreign_append_racing_our_request_is_a_conflict(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake(foreign_bytes=b"XY")
    writer = writer_for(fake)
    await writer.append(b"ab")
    fake.inject(Fault.FOREIGN_APPEND)
    # The foreign write lands first; ours is refused, so it cannot be there: HEAD finds 4, not 2.
    with pytest.raises(ConflictError, match=r"expected length 2, found 4"):
        await writer.append(b"abc")
    assert fake.object_bytes(BUCKET, "host/app.log") == b"abXY"


async def test_foreign_append_of_our_size_is_not_taken_for_ours(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake(foreign_bytes=b"XYZ")
    writer = writer_for(fake)
    await writer.append(b"ab")
    fake.inject(Fault.FOREIGN_APPEND)
    # Every attempt was answered, so the mismatch proves ours did not land, whatever the length says.
    with pytest.raises(ConflictError, match=r"expected length 2, found 5"):
        await writer.append(b"abc")
    assert fake.object_bytes(BUCKET, "host/app.log") == b"abXYZ"


async def test_deleted_object_is_a_conflict(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake()
    writer = writer_for(fake)
    await writer.append(b"abc")
    del fake.buckets[BUCKET]["host/app.log"]
    with pytest.raises(ConflictError, match="found 0"):
        await writer.append(b"d")
    assert fake.object_bytes(BUCKET, "host/app.log") is None


@pytest.mark.parametrize("seed", range(8))
async def test_exact_copy_through_random_faults(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(seed)
    fake = new_fake(offset_error=rng.choice(["InvalidArgument", "InvalidWriteOffset"]))
    injected: Counter[Fault] = Counter()

    def faults(seen: object) -> Fault | None:
        fault = rng.choice(FAULTS) if rng.random() < 0.3 else None
        injected[fault] += 1
        return fault

    fake.fault_source = faults
    writer = writer_for(fake, rand=rng.random)
    sent = bytearray()
    for i in range(150):
        chunk = f"{seed}:{i}:".encode() + bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        assert await writer.append(chunk) == len(sent) + len(chunk)
        sent += chunk
    assert fake.object_bytes(BUCKET, "host/app.log") == bytes(sent)
    assert writer.offset == len(sent)
    assert all(injected[f] >= 5 for f in FAULTS), injected  # every kind of fault really happened


async def test_giving_up_leaves_the_append_pending(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake()
    writer = writer_for(fake, retry=RetryPolicy(base=0.1, max_attempts=2))
    await writer.append(b"a")
    fake.inject(Fault.DROP_RESPONSE)  # applied, answer lost ...
    fake.inject(Fault.RESET_BEFORE, Fault.RESET_BEFORE, op="head")  # ... and HEAD cannot say so
    with pytest.raises(TransportError):
        await writer.append(b"bb")
    assert writer.pending == 2 and writer.offset == 1
    with pytest.raises(AppendPending, match="retry that same data"):
        await writer.append(b"other data")
    assert await writer.append(b"bb") == 3  # same data: reconciled, not sent twice
    assert fake.object_bytes(BUCKET, "host/app.log") == b"abb"
    assert fake.count("append") == 2


@pytest.mark.parametrize(
    ("stored", "pending", "verdict", "offset"),
    [
        (b"0123456789", 4, Reconciled.LANDED, 10),
        (b"012345", 4, Reconciled.NOT_LANDED, 6),
        (b"012345", None, Reconciled.NOT_LANDED, 6),
    ],
)
async def test_resume_decides_a_recorded_intent(
    stored: bytes, pending: int | None, verdict: Reconciled, offset: int, autojump_clock: trio.testing.MockClock
) -> None:
    fake = new_fake()
    fake.foreign_append(BUCKET, "k", stored)
    writer = writer_for(fake, "k")
    assert await writer.resume(6, pending) is verdict
    assert writer.offset == offset
    await writer.append(b"!")
    assert fake.object_bytes(BUCKET, "k") == stored + b"!"


@pytest.mark.parametrize(("stored", "pending"), [(b"0123", 4), (b"0123456789AB", 4), (b"01234567", None)])
async def test_resume_refuses_foreign_lengths(
    stored: bytes, pending: int | None, autojump_clock: trio.testing.MockClock
) -> None:
    fake = new_fake()
    fake.foreign_append(BUCKET, "k", stored)
    with pytest.raises(ConflictError):
        await writer_for(fake, "k").resume(6, pending)


async def test_resume_of_a_missing_object_at_zero(autojump_clock: trio.testing.MockClock) -> None:
    writer = writer_for(new_fake(), "k")
    assert await writer.resume(0, 5) is Reconciled.NOT_LANDED
    assert writer.offset == 0


async def test_intent_is_announced_before_the_request(autojump_clock: trio.testing.MockClock) -> None:
    fake = new_fake()
    seen: list[tuple[Intent, int]] = []

    async def record(intent: Intent) -> None:
        seen.append((intent, fake.count("append")))

    writer = writer_for(fake, on_intent=record)
    fake.inject(Fault.RESET_BEFORE)
    await writer.append(b"abc")
    await writer.append(b"de")
    assert seen == [(Intent(BUCKET, "host/app.log", 0, 3), 0), (Intent(BUCKET, "host/app.log", 3, 2), 2)]


async def test_concurrent_use_is_refused(mock_clock: trio.testing.MockClock) -> None:
    fake = new_fake()
    writer = writer_for(fake, retry=RetryPolicy(base=10.0, cap=10.0, max_attempts=3), rand=lambda: 1.0)
    fake.inject(Fault.SLOW_DOWN)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.append, b"first")
        await trio.testing.wait_all_tasks_blocked()  # the first append is in its backoff sleep
        with pytest.raises(trio.BusyResourceError):
            await writer.append(b"second")
        mock_clock.jump(10.0)
    assert fake.object_bytes(BUCKET, "host/app.log") == b"first"
