"""S3 Express sessions: CreateSession, caching, refresh timing on virtual time."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx
import pytest
import trio
import trio.testing

from sink.client import S3Client
from sink.errors import AuthError
from sink.session import S3ExpressSessions, parse_create_session, sigv4_session_signer
from sink.sigv4 import SigV4Auth
from sink.testing import FakeS3

BUCKET = "logs--usw2-az1--x-s3"
SERVER_NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=timezone.utc)  # far from the local clock on purpose


def setup(lifetime: float = 300.0, margin: float = 60.0) -> tuple[FakeS3, S3ExpressSessions, S3Client]:
    fake = FakeS3(require_session=True, session_lifetime=lifetime, wall_clock=lambda: SERVER_NOW)
    fake.create_bucket(BUCKET)
    http = httpx.AsyncClient(transport=fake)
    base = S3Client(http, "http://127.0.0.1:9000", auth=SigV4Auth("IAMKEY", "iamsecret", "us-west-2", service="s3express"))
    sessions = S3ExpressSessions(base, signer=sigv4_session_signer("us-west-2"), refresh_margin=margin)
    return fake, sessions, S3Client(http, "http://127.0.0.1:9000", auth=sessions)


async def test_requests_are_signed_with_the_session(autojump_clock: trio.testing.MockClock) -> None:
    fake, _, s3 = setup()
    await s3.append(BUCKET, "k", 0, b"data")
    create, append = fake.requests
    assert create.op == "create_session"
    assert "Credential=IAMKEY/" in create.headers["authorization"]
    assert "/us-west-2/s3express/aws4_request" in create.headers["authorization"]
    assert "x-amz-s3session-token" not in create.headers
    assert append.headers["x-amz-s3session-token"] == "session-token-1"
    assert "Credential=SESSIONKEY1/" in append.headers["authorization"]
    assert "/s3express/aws4_request" in append.headers["authorization"]
    assert "x-amz-security-token" not in append.headers
    assert fake.object_bytes(BUCKET, "k") == b"data"


async def test_session_is_reused_then_refreshed_ahead_of_expiry(autojump_clock: trio.testing.MockClock) -> None:
    fake, sessions, s3 = setup(lifetime=300.0, margin=60.0)
    start = trio.current_time()
    await s3.head_object(BUCKET, "k")
    assert sessions.refresh_at(BUCKET) == start + 240.0  # lifetime from Expiration - Date, minus the margin
    await trio.sleep(239.0)
    await s3.head_object(BUCKET, "k")
    assert fake.count("create_session") == 1
    await trio.sleep(1.0)
    await s3.head_object(BUCKET, "k")
    assert fake.count("create_session") == 2
    assert sessions.refresh_at(BUCKET) == start + 480.0
    assert all(r.headers.get("x-amz-s3session-token") for r in fake.requests if r.op == "head")


async def test_short_sessions_refresh_at_half_life(autojump_clock: trio.testing.MockClock) -> None:
    _, sessions, s3 = setup(lifetime=90.0, margin=60.0)
    start = trio.current_time()
    await s3.head_object(BUCKET, "k")
    assert sessions.refresh_at(BUCKET) == start + 45.0


async def test_concurrent_requests_share_one_create_session(autojump_clock: trio.testing.MockClock) -> None:
    fake, _, s3 = setup()
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(s3.append, BUCKET, f"k{i}", 0, b"x")
    assert fake.count("create_session") == 1
    assert fake.count("append") == 5


@pytest.mark.parametrize("op", ["append", "head"])  # HEAD's refusal has no body to read the code from
async def test_expired_session_is_replaced_and_the_request_retried(op: str, autojump_clock: trio.testing.MockClock) -> None:
    fake, _, s3 = setup()
    await s3.append(BUCKET, "k", 0, b"a")
    for token, (bucket, _) in list(fake.sessions.items()):
        fake.sessions[token] = (bucket, trio.current_time())  # the server ends the session early
    if op == "append":
        assert (await s3.append(BUCKET, "k", 1, b"b")).new_size == 2
    else:
        state = await s3.head_object(BUCKET, "k")
        assert state is not None and state.size == 1
    assert fake.count("create_session") == 2
    assert [r.headers["x-amz-s3session-token"] for r in fake.requests if r.op == op][-2:] == [
        "session-token-1",
        "session-token-2",
    ]


async def test_a_refused_session_is_an_auth_error(autojump_clock: trio.testing.MockClock) -> None:
    fake, sessions, _ = setup()
    # Signed by a session for another bucket: AccessDenied is not an expired session, so no retry.
    other = S3Client(httpx.AsyncClient(transport=fake), "http://127.0.0.1:9000", auth=sessions.auth_for(BUCKET))
    fake.create_bucket("other--usw2-az1--x-s3")
    with pytest.raises(AuthError, match="AccessDenied"):
        await other.append("other--usw2-az1--x-s3", "k", 0, b"x")
    assert fake.count("create_session") == 1 and fake.count("append") == 1
    assert "created=1" in repr(sessions)


def test_parse_create_session() -> None:
    body = (
        b'<CreateSessionResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Credentials>'
        b"<SessionToken>TOKEN</SessionToken><SecretAccessKey>SECRET</SecretAccessKey>"
        b"<AccessKeyId>AKID</AccessKeyId><Expiration>2026-01-02T03:09:05Z</Expiration>"
        b"</Credentials></CreateSessionResult>"
    )
    grant = parse_create_session(body, {"date": "Fri, 02 Jan 2026 03:04:05 GMT"})
    assert (grant.access_key_id, grant.secret_access_key, grant.session_token) == ("AKID", "SECRET", "TOKEN")
    assert grant.expiration == datetime(2026, 1, 2, 3, 9, 5, tzinfo=timezone.utc)
    assert (grant.expiration - grant.server_time).total_seconds() == 300  # type: ignore[operator]
    assert "SECRET" not in repr(grant) and "TOKEN" not in repr(grant)
    with pytest.raises(ValueError, match="SessionToken"):
        parse_create_session(body.replace(b"<SessionToken>TOKEN</SessionToken>", b""), {})
