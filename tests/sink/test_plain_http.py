"""PlainHTTPTransport: the sink's S3 requests over it against the real server, and the answers a
server may give (chunked, close-delimited, interim, malformed, none) from a scripted one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest
import trio
import trio.testing

from sink.append import ObjectWriter
from sink.client import S3Client
from sink.errors import NotFoundError, TransportError
from sink.plain_http import PlainHTTPTransport
from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, SECRET_KEY


async def append_read_and_miss(client: S3Client, bucket: str, prefix: str, lines: int) -> None:
    """The sink's everyday requests: open, append ``lines`` lines, read the object back, miss another."""
    writer = ObjectWriter(client, bucket, f"{prefix}/one.log")
    await writer.open()
    for i in range(lines):
        await writer.append(f"line {i}\n".encode())
    expected = b"".join(f"line {i}\n".encode() for i in range(lines))
    assert await client.get_object(bucket, f"{prefix}/one.log") == expected
    assert (await client.head_object(bucket, f"{prefix}/one.log")).size == len(expected)  # type: ignore[union-attr]
    assert await client.head_object(bucket, f"{prefix}/none.log") is None
    with pytest.raises(NotFoundError) as refused:
        await client.get_object(bucket, f"{prefix}/none.log")
    assert refused.value.code == "NoSuchKey"  # the error body was read and parsed


async def test_the_sinks_requests_work_over_it_on_one_kept_alive_connection(server, bucket: str) -> None:
    async with PlainHTTPTransport(4) as transport:
        async with httpx.AsyncClient(transport=transport, timeout=30) as http:
            client = S3Client(http, server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION))
            await append_read_and_miss(client, bucket, "plain", 20)
            assert [len(c) for c in transport._idle.values()] == [1]  # sequential requests: one connection


async def test_a_large_body_is_sent_whole(server, bucket: str) -> None:
    async with httpx.AsyncClient(transport=PlainHTTPTransport(2), timeout=30) as http:
        client = S3Client(http, server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION))
        body = bytes(range(256)) * 4096  # 1 MiB: head and body in two writes
        await client.put_object(bucket, "plain/big", body)
        assert await client.get_object(bucket, "plain/big") == body


Script = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def serve_script(nursery: trio.Nursery, script: Script) -> tuple[str, list[int]]:
    """A server that reads each request's head and lets ``script`` answer; the URL and requests per connection."""
    per_connection: list[int] = []

    async def handle(stream: trio.SocketStream) -> None:
        per_connection.append(0)
        index = len(per_connection) - 1
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = await stream.receive_some(65536)
                    except (trio.ClosedResourceError, trio.BrokenResourceError):
                        return  # the script closed it
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                per_connection[index] += 1
                await script(stream, head)

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}", per_connection


async def get(url: str, transport: PlainHTTPTransport, method: str = "GET") -> httpx.Response:
    """One request through ``transport`` (the pool stays open: ``transport`` is closed by its test)."""
    return await httpx.AsyncClient(transport=transport, timeout=5).request(method, url)


async def test_chunked_and_interim_answers_are_read_and_the_connection_kept(nursery: trio.Nursery) -> None:
    async def script(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n"
                              b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")

    url, per_connection = await serve_script(nursery, script)
    async with PlainHTTPTransport(1) as transport:
        for _ in range(3):
            response = await get(url + "/x", transport)
            assert (response.status_code, response.content) == (200, b"hello, world")
        assert per_connection == [3]


async def test_a_body_ended_by_close_and_connection_close_are_not_reused(nursery: trio.Nursery) -> None:
    async def script(stream: trio.SocketStream, head: bytes) -> None:
        if head.startswith(b"GET /close-delimited"):
            await stream.send_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        else:
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await stream.aclose()

    url, per_connection = await serve_script(nursery, script)
    async with PlainHTTPTransport(1) as transport:
        assert (await get(url + "/close-delimited", transport)).content == b"until the end"
        assert (await get(url + "/closing", transport)).content == b"ok"
        assert (await get(url + "/closing", transport)).content == b"ok"
        assert per_connection == [1, 1, 1]


async def test_head_answers_have_no_body_even_with_a_length(nursery: trio.Nursery) -> None:
    async def script(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")

    url, per_connection = await serve_script(nursery, script)
    async with PlainHTTPTransport(1) as transport:
        for _ in range(2):
            response = await get(url + "/x", transport, "HEAD")
            assert response.headers["content-length"] == "1000" and response.content == b""
        assert per_connection == [2]


async def test_an_idle_connection_the_server_closed_is_not_reused(nursery: trio.Nursery) -> None:
    async def script(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        await stream.aclose()  # without saying Connection: close

    url, per_connection = await serve_script(nursery, script)
    async with PlainHTTPTransport(1, recheck_idle=0) as transport:
        await get(url + "/a", transport)
        await trio.testing.wait_all_tasks_blocked()
        assert (await get(url + "/b", transport)).status_code == 204  # on a new connection, not an error
        assert per_connection == [1, 1]


@pytest.mark.parametrize("answer, error", [
    (b"", httpx.RemoteProtocolError),  # closed without an answer
    (b"SMTP ready\r\n\r\n", httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", httpx.RemoteProtocolError),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", httpx.RemoteProtocolError),
])
async def test_bad_answers_are_httpx_errors(nursery: trio.Nursery, answer: bytes, error: type[Exception]) -> None:
    async def script(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(answer)
        await stream.aclose()

    url, _ = await serve_script(nursery, script)
    async with PlainHTTPTransport(1) as transport:
        with pytest.raises(error):
            await get(url + "/x", transport)


async def test_no_answer_within_the_read_timeout(nursery: trio.Nursery) -> None:
    async def script(stream: trio.SocketStream, head: bytes) -> None:
        await trio.sleep_forever()  # the silent server under test

    url, _ = await serve_script(nursery, script)
    async with httpx.AsyncClient(transport=PlainHTTPTransport(1), timeout=httpx.Timeout(5, read=0.05)) as http:
        client = S3Client(http, url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION))
        with pytest.raises(TransportError, match="ReadTimeout"):
            await client.head_object("bkt", "key")


async def test_nothing_listening_is_a_connect_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        async with PlainHTTPTransport(1) as transport:
            with pytest.raises(httpx.ConnectError):
                await get(f"http://127.0.0.1:{port}/x", transport)
