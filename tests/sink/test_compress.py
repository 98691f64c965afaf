"""gzip mode: every append is one gzip member, so the object is always a valid .gz."""

from __future__ import annotations

import gzip
import random

import httpx
import pytest
import trio.testing

from sink.append import ObjectWriter
from sink.client import S3Client
from sink.compress import GzipMembers, Identity
from sink.retry import RetryPolicy
from sink.testing import FakeS3, Fault


def test_members_are_deterministic_and_concatenate() -> None:
    codec = GzipMembers()
    assert codec.encode(b"line\n") == codec.encode(b"line\n")  # mtime=0: retries send identical bytes
    assert gzip.decompress(codec.encode(b"a\n") + codec.encode(b"b\n")) == b"a\nb\n"
    assert codec.encode(b"") == b""
    assert Identity().encode(b"x") == b"x"
    with pytest.raises(ValueError):
        GzipMembers(level=0)


async def test_gzip_object_round_trips_through_faults(autojump_clock: trio.testing.MockClock) -> None:
    rng = random.Random(11)
    fake = FakeS3()
    fake.create_bucket("logs")
    kinds = [Fault.DROP_RESPONSE, Fault.RESET_BEFORE, Fault.SLOW_DOWN, Fault.INTERNAL_ERROR]
    fake.fault_source = lambda seen: rng.choice(kinds) if rng.random() < 0.3 else None
    client = S3Client(httpx.AsyncClient(transport=fake), "http://127.0.0.1:9000")
    writer = ObjectWriter(
        client, "logs", "app.log.gz", codec=GzipMembers(level=1), retry=RetryPolicy(max_attempts=40), rand=rng.random
    )
    plain = bytearray()
    for i in range(60):
        lines = b"".join(b"%d request served in %d ms\n" % (i, rng.randrange(1000)) for _ in range(rng.randrange(1, 20)))
        length = await writer.append(lines)
        plain += lines
        stored = fake.object_bytes("logs", "app.log.gz")
        assert stored is not None and len(stored) == length  # offsets count compressed bytes
        assert gzip.decompress(stored) == bytes(plain)  # valid .gz after every append
