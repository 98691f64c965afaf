"""S3Client against the in-memory FakeS3 (and httpx.MockTransport for odd answers)."""

from __future__ import annotations

import httpx
import pytest
import trio.testing

from sink.append_batch import BatchItem
from sink.client import AppendAck, ObjectState, S3Client
from sink.errors import (
    AuthError,
    NotFoundError,
    OffsetMismatchError,
    RemoteError,
    ServerError,
    ThrottledError,
    TooManyAppends,
    TransportError,
)
from sink.sigv4 import SigV4Auth
from sink.testing import FakeS3, Fault

ENDPOINT = "http://127.0.0.1:9000"


def client_for(transport: httpx.AsyncBaseTransport, endpoint: str = ENDPOINT, **kw: object) -> S3Client:
    return S3Client(httpx.AsyncClient(transport=transport), endpoint, **kw)  # type: ignore[arg-type]


@pytest.fixture
def fake() -> FakeS3:
    fake = FakeS3()
    fake.create_bucket("logs")
    return fake


async def test_append_head_get_round_trip(fake: FakeS3) -> None:
    s3 = client_for(fake)
    assert await s3.head_object("logs", "k") is None
    assert await s3.append("logs", "k", 0, b"hello ") == AppendAck(6, fake.buckets["logs"]["k"].etag, 6)
    ack = await s3.append("logs", "k", 6, b"world")
    assert (ack.new_size, ack.reported_size) == (11, 11)
    state = await s3.head_object("logs", "k")
    assert state == ObjectState(11, ack.etag)
    assert await s3.get_object("logs", "k") == b"hello world"
    assert await s3.get_object("logs", "k", range=(6, None)) == b"world"
    assert await s3.get_object("logs", "k", range=(0, 4)) == b"hello"


async def test_append_sends_fixed_length_and_a_checksum(fake: FakeS3) -> None:
    await client_for(fake).append("logs", "k", 0, b"x" * 100)
    sent = fake.requests[-1]
    assert sent.headers["content-length"] == "100"
    assert sent.headers["x-amz-write-offset-bytes"] == "0"
    assert "x-amz-checksum-crc32" in sent.headers  # verified by the fake, which answers BadDigest otherwise
    assert "transfer-encoding" not in sent.headers
    await client_for(fake, checksum="md5").append("logs", "k", 100, b"y")
    assert "content-md5" in fake.requests[-1].headers


async def test_offset_mismatch_carries_the_s3_error(fake: FakeS3) -> None:
    s3 = client_for(fake)
    await s3.append("logs", "k", 0, b"abc")
    with pytest.raises(OffsetMismatchError) as info:
        await s3.append("logs", "k", 5, b"zz")
    err = info.value
    assert (err.code, err.status, err.key, err.request_id) == ("InvalidArgument", 400, "k", "fake-InvalidArgument")
    assert "5" in err.remote_message and "3" in err.remote_message
    assert fake.object_bytes("logs", "k") == b"abc"


async def test_s3express_flavour_mismatch_code() -> None:
    fake = FakeS3(offset_error="InvalidWriteOffset")
    fake.create_bucket("logs")
    s3 = client_for(fake)
    await s3.append("logs", "k", 0, b"abc")
    with pytest.raises(OffsetMismatchError, match="InvalidWriteOffset"):
        await s3.append("logs", "k", 0, b"abc")


async def test_append_past_zero_to_a_missing_object_is_not_found(fake: FakeS3) -> None:
    with pytest.raises(NotFoundError) as info:
        await client_for(fake).append("logs", "missing", 7, b"x")
    assert info.value.code == "NoSuchKey"
    with pytest.raises(NotFoundError, match="NoSuchBucket"):
        await client_for(fake).append("nobucket", "k", 0, b"x")


async def test_too_many_parts_asks_for_roll_over() -> None:
    fake = FakeS3(max_appends=2)
    fake.create_bucket("logs")
    s3 = client_for(fake)
    await s3.append("logs", "k", 0, b"a")
    await s3.append("logs", "k", 1, b"b")
    with pytest.raises(TooManyAppends, match="TooManyParts"):
        await s3.append("logs", "k", 2, b"c")


async def test_faults_become_sink_errors(fake: FakeS3) -> None:
    s3 = client_for(fake)
    fake.inject(Fault.RESET_BEFORE, Fault.SLOW_DOWN, Fault.INTERNAL_ERROR)
    with pytest.raises(TransportError) as reset:
        await s3.append("logs", "k", 0, b"a")
    assert isinstance(reset.value.__cause__, httpx.ReadError)
    with pytest.raises(ThrottledError, match="SlowDown"):
        await s3.append("logs", "k", 0, b"a")
    with pytest.raises(ServerError, match="InternalError"):
        await s3.append("logs", "k", 0, b"a")
    assert fake.object_bytes("logs", "k") is None  # none of them applied anything
    fake.inject(Fault.DROP_RESPONSE)
    with pytest.raises(TransportError) as dropped:
        await s3.append("logs", "k", 0, b"a")
    assert isinstance(dropped.value.__cause__, httpx.ReadTimeout)
    assert fake.object_bytes("logs", "k") == b"a"  # the ambiguous case: applied, answer lost
    assert repr(s3).endswith("sent=4 in_flight=0 last_error='ReadTimeout'>")


async def test_put_replaces_and_delete_removes(fake: FakeS3) -> None:
    s3 = client_for(fake)
    await s3.append("logs", "k", 0, b"old bytes")
    etag = await s3.put_object("logs", "k", b"new")
    assert etag is not None and fake.object_bytes("logs", "k") == b"new"
    await s3.delete_object("logs", "k")
    assert await s3.head_object("logs", "k") is None
    assert (await s3.append("logs", "k", 0, b"again")).new_size == 5


async def test_create_bucket_tolerates_our_own_bucket() -> None:
    fake = FakeS3()
    s3 = client_for(fake)
    await s3.create_bucket("fresh")
    await s3.create_bucket("fresh")
    with pytest.raises(RemoteError, match="BucketAlreadyOwnedByYou"):
        await s3.create_bucket("fresh", exist_ok=False)


async def test_virtual_host_addressing_reaches_the_bucket(fake: FakeS3) -> None:
    s3 = client_for(fake, "https://s3.eu-west-1.amazonaws.com")
    await s3.append("logs", "dir/a b+c.log", 0, b"vh")
    assert fake.requests[-1].host == "logs.s3.eu-west-1.amazonaws.com"
    assert fake.object_bytes("logs", "dir/a b+c.log") == b"vh"


async def test_auth_errors_say_what_to_fix() -> None:
    body = b"<Error><Code>SignatureDoesNotMatch</Code><Message>no match</Message></Error>"
    transport = httpx.MockTransport(lambda request: httpx.Response(403, content=body, headers={"x-amz-request-id": "R9"}))
    with pytest.raises(AuthError) as info:
        await client_for(transport).append("logs", "k", 0, b"x")
    assert info.value.request_id == "R9"
    assert "secret access key" in str(info.value) and "region" in str(info.value)


async def test_odd_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(200, headers={"content-length": "nope"})
        return httpx.Response(502, content=b"<html>bad gateway</html>")

    s3 = client_for(httpx.MockTransport(handler))
    with pytest.raises(RemoteError, match="Content-Length"):
        await s3.head_object("logs", "k")
    with pytest.raises(ServerError) as info:
        await s3.append("logs", "k", 0, b"x")
    assert (info.value.status, info.value.code) == (502, "HTTP502")


async def test_sigv4_signed_requests(fake: FakeS3) -> None:
    auth = SigV4Auth("AKIDTEST", "secret", "eu-west-1", session_token="TOK")
    await client_for(fake, auth=auth).append("logs", "k", 0, b"signed")
    headers = fake.requests[-1].headers
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert "/eu-west-1/s3/aws4_request" in headers["authorization"]
    assert "x-amz-write-offset-bytes" in headers["authorization"]  # the offset is signed
    assert headers["x-amz-security-token"] == "TOK"


async def test_connect_timeout_is_a_transport_error(autojump_clock: trio.testing.MockClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    with pytest.raises(TransportError, match="ConnectTimeout"):
        await client_for(httpx.MockTransport(handler)).head_object("logs", "k")


async def test_a_key_over_1024_bytes_is_refused_as_s3_does(fake: FakeS3) -> None:
    """The fake holds keys to S3's limit, a PUT's and an AppendObjects item's alike (the server's answer)."""
    s3 = client_for(fake)
    long_key = "é" * 513  # 1,026 bytes of UTF-8
    with pytest.raises(RemoteError) as info:
        await s3.append("logs", long_key, 0, b"x")
    assert (info.value.code, info.value.status) == ("KeyTooLongError", 400)
    results = await s3.append_objects("logs", [BatchItem(long_key, 0, b"x"), BatchItem("k", 0, b"y")])
    assert [(r.status, r.code) for r in results] == [(400, "KeyTooLongError"), (200, None)]
    assert list(fake.buckets["logs"]) == ["k"]
    assert (await s3.append("logs", "é" * 512, 0, b"z")).new_size == 1  # exactly 1,024 bytes: fine
