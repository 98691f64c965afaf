"""The sink's S3Client and ObjectWriter against the real server (a subprocess).

Faults are real: the server process is SIGKILLed and restarted from inside a
transport wrapper at the exact moment that matters (after it answered, or
half-way through a body), so the writer's reconcile sees what a crash leaves.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import trio
from structlog.testing import capture_logs

from sink.append import ObjectWriter
from sink.client import S3Client
from sink.errors import ConflictError, RemoteError
from sink.retry import RetryPolicy
from sink.session import SESSION_TOKEN_HEADER, SIGNING_SERVICE, S3ExpressSessions
from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, SECRET_KEY, ServerProcess

QUICK_RETRY = RetryPolicy(base=0.05, cap=0.5, max_attempts=None, max_elapsed=30.0)


def is_append(request: httpx.Request) -> bool:
    return request.method == "PUT" and "x-amz-write-offset-bytes" in request.headers


class _HalfThenStop(httpx.AsyncByteStream):
    """Yields the first half of a body, then runs ``on_half`` (kill the server) and the rest."""

    def __init__(self, body: bytes, on_half: Callable[[], object]) -> None:
        self.parts = [body[: len(body) // 2], None, body[len(body) // 2 :]]
        self.on_half = on_half

    def __aiter__(self) -> _HalfThenStop:
        return self

    async def __anext__(self) -> bytes:
        while self.parts:
            part = self.parts.pop(0)
            if part is None:
                await trio.to_thread.run_sync(self.on_half)
                continue
            return part
        raise StopAsyncIteration


class CrashingTransport(httpx.AsyncBaseTransport):
    """The real network, except that append number ``at`` crashes the server.

    ``after_answer``: the server commits and answers, then dies before the
    client reads the answer (the append landed, the client cannot know).
    ``mid_body``: the server dies with half the body received (nothing lands).
    Either way the server is restarted before the client sees the error.
    """

    def __init__(self, server: ServerProcess, at: int, mode: str) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.server, self.at, self.mode = server, at, mode
        self.appends = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not is_append(request):
            return await self.inner.handle_async_request(request)
        self.appends += 1
        if self.appends != self.at:
            return await self.inner.handle_async_request(request)
        if self.mode == "after_answer":
            response = await self.inner.handle_async_request(request)
            await response.aread()
            assert response.status_code == 200
            await trio.to_thread.run_sync(self.server.kill)
            await trio.to_thread.run_sync(self.server.restart)
            raise httpx.ReadError("the server died before its answer arrived", request=request)
        body = await request.aread()
        cut = httpx.Request(request.method, request.url, headers=request.headers,
                            stream=_HalfThenStop(body, self.server.kill))
        try:
            response = await self.inner.handle_async_request(cut)
            await response.aread()
        except httpx.TransportError:
            await trio.to_thread.run_sync(self.server.restart)
            raise
        raise AssertionError(f"a server killed mid-body answered {response.status_code}")

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def sink_client(url: str, transport: httpx.AsyncBaseTransport | None = None) -> AsyncIterator[S3Client]:
    async with httpx.AsyncClient(transport=transport, timeout=30) as http:
        yield S3Client(http, url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION))


def verdicts(logs: list[dict]) -> list[str]:
    return [e["verdict"] for e in logs if e["event"] == "append_reconciled"]


# -- appends -----------------------------------------------------------------------


async def test_appends_build_the_object(server, s3, bucket) -> None:
    async with sink_client(server.url) as client:
        writer = ObjectWriter(client, bucket, "app.log", retry=QUICK_RETRY)
        assert await writer.open() == 0
        bodies = [b"first line\n", os.urandom(300_000), b"", b"last line\n"]
        lengths = [await writer.append(body) for body in bodies]
        assert lengths == [11, 300_011, 300_011, 300_021]
        ack = await client.append(bucket, "app.log", 300_021, b"raw\n")
        assert (ack.reported_size, ack.new_size) == (300_025, 300_025)  # x-amz-object-size came back
        assert await client.get_object(bucket, "app.log", (300_011, None)) == b"last line\nraw\n"
    stored = s3.get_object(Bucket=bucket, Key="app.log")["Body"].read()
    assert stored == b"".join(bodies) + b"raw\n"


async def test_a_second_writer_resumes_from_the_remote_length(server, bucket) -> None:
    async with sink_client(server.url) as client:
        first = ObjectWriter(client, bucket, "k", retry=QUICK_RETRY)
        await first.append(b"a" * 100)
        second = ObjectWriter(client, bucket, "k", retry=QUICK_RETRY)
        assert await second.open() == 100
        assert await second.append(b"b") == 101


# -- reconcile after a server crash ---------------------------------------------


async def test_answer_lost_in_a_crash_is_reconciled_as_landed(make_server) -> None:
    private = make_server()
    transport = CrashingTransport(private, at=2, mode="after_answer")
    async with sink_client(private.url, transport) as client:
        await client.create_bucket("crash")
        writer = ObjectWriter(client, "crash", "k", retry=QUICK_RETRY)
        with capture_logs() as logs:
            for body in (b"one\n", b"two\n", b"three\n"):
                await writer.append(body)
        assert verdicts(logs) == ["landed"]
        assert transport.appends == 3  # "two" was not sent again
        assert await client.get_object("crash", "k") == b"one\ntwo\nthree\n"


async def test_server_killed_mid_body_is_reconciled_as_not_landed(make_server) -> None:
    private = make_server()
    transport = CrashingTransport(private, at=2, mode="mid_body")
    big = os.urandom(4 * 1024 * 1024)
    async with sink_client(private.url, transport) as client:
        await client.create_bucket("crash")
        writer = ObjectWriter(client, "crash", "k", retry=QUICK_RETRY)
        with capture_logs() as logs:
            for body in (b"one\n", big, b"three\n"):
                await writer.append(body)
        assert verdicts(logs) == ["not_landed"]
        assert transport.appends == 4  # the torn one, then the same body again
        assert await client.get_object("crash", "k") == b"one\n" + big + b"three\n"


# -- other writers -----------------------------------------------------------------


async def test_foreign_append_is_a_conflict_and_nothing_is_overwritten(server, s3, bucket) -> None:
    async with sink_client(server.url) as client:
        writer = ObjectWriter(client, bucket, "k", retry=QUICK_RETRY)
        await writer.append(b"ours\n")
        s3.put_object(Bucket=bucket, Key="k", Body=b"theirs\n", WriteOffsetBytes=5)
        with pytest.raises(ConflictError) as refused:
            await writer.append(b"more of ours\n")
        assert refused.value.actual == 12  # ours (5) + theirs (7): not a length our append could make
        with pytest.raises(ConflictError):  # the writer stays stopped
            await writer.append(b"again\n")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"ours\ntheirs\n"


async def test_two_writers_at_one_offset_exactly_one_wins(server, s3, bucket) -> None:
    async with sink_client(server.url) as client:
        writers = [ObjectWriter(client, bucket, "k", retry=QUICK_RETRY) for _ in range(2)]
        for w in writers:
            await w.open()
        outcomes: dict[int, str] = {}

        async def attempt(i: int) -> None:
            try:
                await writers[i].append(b"writer %d\n" % i)
                outcomes[i] = "ok"
            except ConflictError:
                outcomes[i] = "conflict"

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(attempt, i)
    assert sorted(outcomes.values()) == ["conflict", "ok"]
    winner = next(i for i, o in outcomes.items() if o == "ok")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"writer %d\n" % winner


# -- roll-over ---------------------------------------------------------------------


async def test_roll_over_when_the_server_says_too_many_parts(make_server, tmp_path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text("max_appends: 5\n")
    private = make_server("--config", str(config))
    async with sink_client(private.url) as client:
        await client.create_bucket("roll")
        writer = ObjectWriter(client, "roll", "app.0.log", next_key=lambda n: f"app.{n}.log", retry=QUICK_RETRY)
        with capture_logs() as logs:
            for i in range(12):
                await writer.append(b"%02d\n" % i)
        rolls = [e["reason"] for e in logs if e["event"] == "object_rolled"]
        assert rolls == ["server_too_many_parts"] * 2
        assert (writer.key, writer.index, writer.offset) == ("app.2.log", 2, 6)
        stored = [await client.get_object("roll", f"app.{n}.log") for n in range(3)]
    assert stored == [b"00\n01\n02\n03\n04\n", b"05\n06\n07\n08\n09\n", b"10\n11\n"]


# -- keys --------------------------------------------------------------------------

ODD_KEYS = [
    "a b/c+d.log",
    "ünïcödé/日本語.log",
    "query?x=1&y=2#fragment",
    "percent%2Fliteral%20",
    "~tilde!$'()*,;=:@[]",
    "double//slash/",
    "./dot/../segments/.",
    "tab\tand\x7fdel",
]


@pytest.mark.parametrize("key", ODD_KEYS)
async def test_keys_with_special_characters(server, s3, bucket, key) -> None:
    async with sink_client(server.url) as client:
        writer = ObjectWriter(client, bucket, key, retry=QUICK_RETRY)
        await writer.append(b"one\n")
        await writer.append(b"two\n")
        assert await client.get_object(bucket, key) == b"one\ntwo\n"
        assert (await client.head_object(bucket, key)).size == 8
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [(key, 8)]


# -- S3 Express sessions -------------------------------------------------------------


async def test_s3express_sessions_sign_appends_and_renew_after_a_restart(make_server) -> None:
    private = make_server()
    bucket = "tbs--use1-az4--x-s3"

    def session_signer(grant):  # type: ignore[no-untyped-def]
        return SigV4Auth(grant.access_key_id, grant.secret_access_key, REGION, service=SIGNING_SERVICE,
                         session_token=grant.session_token, session_token_header=SESSION_TOKEN_HEADER)

    async with httpx.AsyncClient(timeout=30) as http:
        keys = SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, service=SIGNING_SERVICE)
        admin = S3Client(http, private.url, auth=keys)
        await admin.create_bucket(bucket)
        sessions = S3ExpressSessions(admin, signer=session_signer)
        client = S3Client(http, private.url, auth=sessions)
        writer = ObjectWriter(client, bucket, "k", retry=RetryPolicy(base=0.05, cap=0.5, max_attempts=10), s3express=True)
        await writer.append(b"before\n")
        assert sessions.sessions_created == 1
        await trio.to_thread.run_sync(private.kill)
        await trio.to_thread.run_sync(private.restart)
        await writer.append(b"after\n")  # the old token is unknown now: a new session, one more try
        assert sessions.sessions_created == 2
        assert await client.get_object(bucket, "k") == b"before\nafter\n"
        # The server does check session tokens: an unknown one is refused as InvalidToken.
        bogus = S3Client(http, private.url, auth=SigV4Auth("TBSBOGUS", "x", REGION, service=SIGNING_SERVICE,
                                                           session_token="nope", session_token_header=SESSION_TOKEN_HEADER))
        with pytest.raises(RemoteError) as refused:
            await bogus.get_object(bucket, "k")
        assert refused.value.code == "InvalidToken"
