"""The client's direct path: requests it signs go to ``PlainHTTPTransport.exchange`` with no httpx
request or response objects, against the real server; the agent's health wrapper learns from it."""

from __future__ import annotations

import httpx
import pytest

from agent.connect import HealthTransport, SinkHealth
from sink.client import S3Client
from sink.errors import OffsetMismatchError, TransportError
from sink.plain_http import PlainHTTPTransport
from sink.sigv4 import SigV4Auth
from tests.sink.test_plain_http import append_read_and_miss
from tests.support import ACCESS_KEY, REGION, SECRET_KEY


def _no_httpx(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"{request.method} {request.url} went through httpx, not the direct exchange")


def test_headers_for_signs_as_sign_does() -> None:
    signer = SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, session_token="token", clock=lambda: 1_800_000_000.0)
    body = b"a line\n"
    request = httpx.Request("PUT", "http://127.0.0.1:9000/b/some%20key?x=1", content=body,
                            headers={"x-amz-write-offset-bytes": "7"})
    headers = [(name.decode().lower(), value.decode()) for name, value in request.headers.raw]
    added = signer.headers_for("PUT", b"/b/some%20key", b"x=1", headers, body)
    signer.sign(request)
    assert [name for name, _ in added] == ["x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "authorization"]
    assert dict(added) == {name: request.headers[name] for name, _ in added}


async def test_the_sinks_requests_take_the_direct_path(server, bucket: str) -> None:
    async with PlainHTTPTransport(2) as transport:
        async with httpx.AsyncClient(transport=httpx.MockTransport(_no_httpx), timeout=30) as http:
            client = S3Client(http, server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, unsigned_payload=True),
                              direct=transport)
            await append_read_and_miss(client, bucket, "direct", 5)
            with pytest.raises(OffsetMismatchError):
                await client.append(bucket, "direct/one.log", 3, b"not at the end\n")
            await client.put_object(bucket, "direct/empty", b"")
            assert await client.get_object(bucket, "direct/empty") == b""


async def test_the_health_wrapper_hears_of_direct_answers_and_failures(server, bucket: str) -> None:
    health = SinkHealth()
    signer = SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, unsigned_payload=True)
    async with PlainHTTPTransport(2) as transport, httpx.AsyncClient(transport=httpx.MockTransport(_no_httpx)) as http:
        wrapped = HealthTransport(transport, health)
        await S3Client(http, server.url, auth=signer, direct=wrapped).head_object(bucket, "direct/none.log")
        assert health.unreachable is None
        with pytest.raises(TransportError):
            await S3Client(http, "http://127.0.0.1:1", auth=signer, direct=wrapped).head_object(bucket, "k")
        assert health.unreachable is not None and "ConnectError" in health.unreachable
