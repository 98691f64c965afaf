"""The HTTP layer against real sockets: the real HTTPServer on 127.0.0.1:0, tiny
handlers, and clients that are raw trio sockets (parsed by an h11 client) or httpx.

Waits are on events with trio.fail_after deadlines; the server's own timeouts are
set short where a test needs one to fire.
"""

from __future__ import annotations

import re
import select
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import h11
import httpx
import pytest
import trio
from structlog.testing import capture_logs

from server import errors
from server.http import HTTPConfig, HTTPServer, KeepAliveTimer, Request, RequestBody, Response

KiB = 1024
MiB = 1024 * KiB
WAIT = 10  # seconds: generous upper bound for anything a test waits on


@asynccontextmanager
async def serving(handler, **config) -> AsyncIterator[tuple[HTTPServer, int]]:
    """The real server on an ephemeral port; shut down (and awaited) on exit."""
    config.setdefault("shutdown_timeout", 5)
    server = HTTPServer(handler, HTTPConfig(**config))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(server.serve, "127.0.0.1", 0)
            yield server, port
            server.shutdown()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    informational: list[int] = field(default_factory=list)


class RawClient:
    """A raw socket; responses are parsed by an h11 client (requests are written by hand)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def has_data(self) -> bool:
        """Whether the server has sent anything not yet read (no waiting)."""
        return bool(select.select([self.stream.socket.fileno()], [], [], 0)[0])

    async def _event(self):
        while (event := self.h11.next_event()) is h11.NEED_DATA:
            self.h11.receive_data(await self.stream.receive_some(64 * KiB))
        return event

    async def informational(self) -> int:
        self._begin("PUT")
        event = await self._event()
        assert type(event) is h11.InformationalResponse, event
        return event.status_code

    def _begin(self, method: str) -> None:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
        if self.h11.our_state is h11.IDLE:  # tell our h11 what we sent, for its framing rules
            self.h11.send(h11.Request(method=method, target="/", headers=[("host", "t")]))
            self.h11.send(h11.EndOfMessage())

    async def response(self, method: str = "GET") -> Reply:
        self._begin(method)
        reply = Reply(0, {}, b"")
        with trio.fail_after(WAIT):
            while True:
                event = await self._event()
                if type(event) is h11.InformationalResponse:
                    reply.informational.append(event.status_code)
                elif type(event) is h11.Response:
                    reply.status = event.status_code
                    reply.headers = {k.decode(): v.decode() for k, v in event.headers}
                elif type(event) is h11.Data:
                    reply.body += event.data
                elif type(event) is h11.EndOfMessage:
                    return reply

    async def exchange(self, data: bytes, method: str = "GET") -> Reply:
        await self.send(data)
        return await self.response(method)

    async def closed_by_server(self) -> bool:
        """Read to the end: True when the server closed (EOF or reset).  Closes our side too."""
        try:
            with trio.fail_after(WAIT):
                while await self.stream.receive_some(64 * KiB):
                    pass
        except trio.BrokenResourceError:
            pass
        finally:
            await self.stream.aclose()
        return True

    async def aclose(self) -> None:
        await self.stream.aclose()


def request(method: str = "GET", target: str = "/", body: bytes = b"", *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: test", *headers]
    if body or method in ("PUT", "POST"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def echo(req: Request) -> Response:
    data = b"".join([chunk async for chunk in req.body])
    return Response(200, [("x-method", req.method), ("x-path", req.path)], data)


# ---- request and response basics --------------------------------------------------------------


async def test_keep_alive_serves_two_requests_on_one_socket():
    remotes = []

    async def handler(req: Request) -> Response:
        remotes.append(req.remote)
        return Response(200, [("x-id", req.request_id)], b"hello")

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        first = await client.exchange(request())
        second = await client.exchange(request())
        await client.aclose()
    assert (first.status, first.body, second.body) == (200, b"hello", b"hello")
    assert first.headers["server"] == "tailbucket" and first.headers["content-length"] == "5"
    assert re.fullmatch(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", first.headers["date"])
    assert re.fullmatch(r"[0-9A-F]{16}", first.headers["x-id"]) and first.headers["x-id"] != second.headers["x-id"]
    assert len(remotes) == 2 and remotes[0] == remotes[1] and remotes[0][0] == "127.0.0.1"


async def test_a_next_request_already_there_is_read_without_waiting_for_readiness(monkeypatch):
    """A kept-alive client's next request that came while the server was busy is read at
    once: no readiness wait (an epoll registration and a keep-alive timer per request)."""
    entered, release = trio.Event(), trio.Event()
    waits: list[int] = []
    waits_before: dict[str, int] = {}
    wait_readable = trio.lowlevel.wait_readable

    async def counted_wait_readable(fd) -> None:
        waits.append(fd)
        await wait_readable(fd)

    async def handler(req: Request) -> Response:
        waits_before[req.path] = len(waits)
        if req.path == "/first":
            entered.set()
            await release.wait()
        return Response(200, [], req.path.encode())

    monkeypatch.setattr(trio.lowlevel, "wait_readable", counted_wait_readable)  # the connection's waits
    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(request("GET", "/first"))
        await entered.wait()
        await client.send(request("GET", "/second"))  # in the server's socket buffer once sent (loopback)
        release.set()
        assert (await client.response()).body == b"/first"
        assert (await client.response()).body == b"/second"
        await client.aclose()
    assert waits_before["/first"] == 1  # a fresh connection waits for its first request
    assert waits_before["/second"] == 1


async def test_a_client_that_closed_while_its_request_ran_gets_the_answer_and_is_closed():
    entered, release = trio.Event(), trio.Event()

    async def handler(req: Request) -> Response:
        entered.set()
        await release.wait()
        return Response(200, [], b"done")

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(request())
        await entered.wait()
        await client.stream.send_eof()  # the EOF waits in the server's socket buffer
        release.set()
        assert (await client.response()).body == b"done"
        assert await client.closed_by_server()


async def test_request_fields_are_raw_and_headers_keep_wire_order():
    seen: list[Request] = []

    async def handler(req: Request) -> Response:
        seen.append(req)
        return Response(204)

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(b"GET /b/k%20y/%E2%9C%93?uploads&x=1 HTTP/1.1\r\nHost: t\r\nX-Amz-Meta-A: 1\r\n"
                          b"x-amz-meta-a: 2\r\nX-Bin: caf\xc3\xa9 \xff\r\n\r\n")
        reply = await client.response()
        await client.aclose()
    assert reply.status == 204 and "content-length" not in reply.headers
    req = seen[0]
    assert (req.method, req.target) == ("GET", "/b/k%20y/%E2%9C%93?uploads&x=1")
    assert (req.path, req.query, req.http_version) == ("/b/k%20y/%E2%9C%93", "uploads&x=1", "1.1")
    assert req.headers[:3] == [("host", "t"), ("x-amz-meta-a", "1"), ("x-amz-meta-a", "2")]
    assert req.header("X-AMZ-META-A") == "1" and req.header("missing", "d") == "d"
    assert req.header("x-bin").encode("utf-8", "surrogateescape") == b"caf\xc3\xa9 \xff"
    assert req.body.content_length is None


async def test_pipelined_requests_are_answered_in_order_one_at_a_time():
    active = max_active = 0

    async def handler(req: Request) -> Response:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        body = await req.body.read()
        await trio.lowlevel.checkpoint()
        active -= 1
        return Response(200, [], req.path.encode() + b":" + body)

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(request("GET", "/1") + request("PUT", "/2", b"two") + request("GET", "/3"))
        replies = [await client.response("GET"), await client.response("PUT"), await client.response("GET")]
        await client.aclose()
    assert [r.body for r in replies] == [b"/1:", b"/2:two", b"/3:"]
    assert max_active == 1


async def test_http10_request_is_answered_and_closed():
    async with serving(echo) as (_, port):
        client = await RawClient.open(port)
        await client.send(b"GET /old HTTP/1.0\r\n\r\n")
        reply = await client.response()
        assert reply.status == 200 and reply.headers["x-path"] == "/old"
        assert await client.closed_by_server()


async def test_httpx_reuses_one_connection():
    ports = set()

    async def handler(req: Request) -> Response:
        ports.add(req.remote[1])
        return await echo(req)

    async with serving(handler) as (_, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            put = await client.put("/a", content=b"x" * 1000)
            get = await client.get("/b")
    assert (put.status_code, put.content, get.content) == (200, b"x" * 1000, b"")
    assert len(ports) == 1


async def test_head_keeps_content_length_and_sends_no_body():
    async def handler(req: Request) -> Response:
        if req.path == "/declared":
            return Response(200, [("content-length", "1234")])
        return Response(200, [], b"twelve bytes")

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(request("HEAD", "/declared") + request("HEAD", "/bytes") + request("GET", "/bytes"))
        declared, from_bytes, get = [await client.response(m) for m in ("HEAD", "HEAD", "GET")]
        await client.aclose()
    assert declared.headers["content-length"] == "1234" and declared.body == b""
    assert from_bytes.headers["content-length"] == "12" and from_bytes.body == b""
    assert get.body == b"twelve bytes"  # no stray HEAD body bytes in front of it


async def test_handler_exception_is_logged_and_answered_500():
    async def handler(req: Request) -> Response:
        if req.path == "/boom":
            raise RuntimeError("bug")
        return Response(200, [], b"ok")

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        with capture_logs() as logs:
            await client.send(request("GET", "/boom"))
            boom = await client.response()
        await client.send(request("GET", "/fine"))
        fine = await client.response()
        await client.aclose()
    assert boom.status == 500 and fine.status == 200  # the connection survives a handler bug
    [entry] = [e for e in logs if e["event"] == "http_handler_error"]
    assert entry["log_level"] == "error" and entry["exc_info"] and entry["path"] == "/boom"


# ---- request bodies ---------------------------------------------------------------------------


async def test_large_body_reaches_the_handler_in_bounded_pieces():
    size = 10 * MiB
    pieces: list[int] = []

    async def handler(req: Request) -> Response:
        while chunk := await req.body.read(64 * KiB):
            pieces.append(len(chunk))
        return Response(200, [], str(sum(pieces)).encode())

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        payload = b"\x00" * MiB
        async with trio.open_nursery() as nursery:
            async def upload() -> None:
                await client.send(f"PUT /big HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode())
                for _ in range(size // MiB):
                    await client.send(payload)
            nursery.start_soon(upload)
            reply = await client.response("PUT")
        await client.aclose()
    assert reply.body == str(size).encode()
    assert max(pieces) <= 64 * KiB and len(pieces) >= size // (64 * KiB)


async def test_chunked_request_body_streams_through():
    seen = {}

    async def handler(req: Request) -> Response:
        seen["length"] = req.body.content_length
        seen["pieces"] = [chunk async for chunk in req.body]
        return Response(200, [], b"".join(seen["pieces"]))

    async def parts():
        for i in range(5):
            yield f"part{i};".encode()

    async with serving(handler) as (_, port):
        async with httpx.AsyncClient() as client:
            reply = await client.put(f"http://127.0.0.1:{port}/c", content=parts())
    assert reply.content == b"part0;part1;part2;part3;part4;"
    assert seen["length"] is None


async def test_read_returns_at_most_max_bytes():
    body = RequestBody.from_bytes(b"abcdefgh", b"ij")
    assert [await body.read(3), await body.read(3), await body.read(3), await body.read(3)] == [b"abc", b"def", b"gh", b"ij"]
    assert await body.read() == b"" and body.complete and body.bytes_read == 10


async def test_a_body_that_came_with_its_head_is_taken_whole_and_a_partial_one_is_read_on():
    taken: list[bytes | None] = []

    async def handler(req: Request) -> Response:
        if req.path == "/partial":
            entered.set()
            await go.wait()  # the head and the first bytes are in; the rest follows later
        taken.append(req.body.take_whole())
        rest = b"".join([chunk async for chunk in req.body])
        return Response(200, [("x-complete", str(req.body.complete)), ("x-read", str(req.body.bytes_read))], rest)

    entered, go = trio.Event(), trio.Event()
    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        whole = await client.exchange(request("PUT", "/whole", b"0123456789"), "PUT")
        empty = await client.exchange(request("PUT", "/empty", b""), "PUT")
        await client.send(request("PUT", "/partial", b"01234").replace(b"Length: 5", b"Length: 10"))
        with trio.fail_after(WAIT):
            await entered.wait()
        go.set()
        await client.send(b"56789")
        partial = await client.response("PUT")
        await client.aclose()
    assert taken == [b"0123456789", b"", None]
    assert (whole.body, whole.headers["x-complete"], whole.headers["x-read"]) == (b"", "True", "10")
    assert (empty.body, empty.headers["x-complete"]) == (b"", "True")
    assert (partial.body, partial.headers["x-complete"], partial.headers["x-read"]) == (b"0123456789", "True", "10")


async def test_100_continue_is_sent_at_the_first_read_only():
    entered, go = trio.Event(), trio.Event()

    async def handler(req: Request) -> Response:
        entered.set()
        await go.wait()
        return await echo(req)

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(request("PUT", "/x", b"", "Expect: 100-continue").replace(b"Length: 0", b"Length: 5"))
        with trio.fail_after(WAIT):
            await entered.wait()
        assert not client.has_data()  # the handler has not read: no 100 yet
        go.set()
        assert await client.informational() == 100
        await client.send(b"hello")
        reply = await client.response("PUT")
        await client.send(request("GET", "/next"))
        after = await client.response()
        await client.aclose()
    assert reply.body == b"hello" and reply.informational == [] and after.status == 200


async def test_early_answer_to_a_client_waiting_for_100_closes_without_reading():
    bodies: list[RequestBody] = []

    async def handler(req: Request) -> Response:
        bodies.append(req.body)
        return Response(403, [], b"denied")

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 104857600\r\n\r\n")
        reply = await client.response("PUT")
        assert reply.status == 403 and reply.informational == [] and reply.headers["connection"] == "close"
        assert await client.closed_by_server()
    assert bodies[0].bytes_read == 0


async def test_early_answer_drains_a_small_body_and_keeps_the_connection():
    async def handler(req: Request) -> Response:
        return Response(400 if req.method == "PUT" else 200, [], b"")

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" + b"a" * 500)
        early = await client.response("PUT")
        assert early.status == 400 and "connection" not in early.headers
        await client.send(b"a" * 1500 + request("GET", "/next"))  # the rest of the body, then the next request
        after = await client.response()
        await client.aclose()
    assert after.status == 200


async def test_early_answer_to_a_large_body_closes():
    async def handler(req: Request) -> Response:
        return Response(400, [], b"no")

    async with serving(handler, drain_max_bytes=64 * KiB) as (_, port):
        client = await RawClient.open(port)
        await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\n" + b"a" * 1000)
        reply = await client.response("PUT")
        assert reply.status == 400 and reply.headers["connection"] == "close"
        assert await client.closed_by_server()


async def test_body_timeout_raises_request_timeout_and_closes():
    raised = []

    async def handler(req: Request) -> Response:
        try:
            await req.body.read()
            await req.body.read()
        except errors.RequestTimeout as exc:
            raised.append(exc)
            raise  # the HTTP layer's last resort answers an escaped S3Error with its status
        return Response(200)

    async with serving(handler, body_timeout=0.2, drain_timeout=0.2) as (_, port):
        client = await RawClient.open(port)
        start = trio.current_time()  # the server's body wait starts later, once these bytes are in
        await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n0123456789")
        reply = await client.response("PUT")
        assert trio.current_time() - start >= 0.2
        assert reply.status == 400 and b"RequestTimeout" in reply.body and reply.headers["connection"] == "close"
        assert await client.closed_by_server()
    assert len(raised) == 1


async def test_client_closing_mid_body_gives_the_handler_incomplete_body():
    raised, done = [], trio.Event()

    async def handler(req: Request) -> Response:
        try:
            while await req.body.read():
                pass
        except errors.IncompleteBody as exc:
            raised.append(exc)
            raise
        finally:
            done.set()
        return Response(200)

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        await client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
        await client.aclose()
        with trio.fail_after(WAIT):
            await done.wait()
    assert len(raised) == 1


# ---- streamed responses -----------------------------------------------------------------------


async def test_streamed_response_goes_chunked_or_by_declared_length():
    async def pieces():
        for i in range(4):
            await trio.lowlevel.checkpoint()
            yield b"%d" % i * 1000

    async def handler(req: Request) -> Response:
        headers = [("content-length", "4000")] if req.path == "/sized" else []
        return Response(200, headers, pieces())

    async with serving(handler) as (_, port):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            chunked = await client.get("/chunked")
            sized = await client.get("/sized")
    expected = b"0" * 1000 + b"1" * 1000 + b"2" * 1000 + b"3" * 1000
    assert chunked.content == expected and chunked.headers["transfer-encoding"] == "chunked"
    assert sized.content == expected and sized.headers["content-length"] == "4000"


async def test_client_leaving_mid_stream_closes_the_body_and_the_server_goes_on():
    closed = trio.Event()

    async def endless():
        try:
            while True:
                await trio.lowlevel.checkpoint()
                yield b"z" * 64 * KiB
        finally:
            closed.set()

    async def handler(req: Request) -> Response:
        return Response(200, [], endless()) if req.path == "/endless" else Response(200, [], b"still here")

    async with serving(handler, send_timeout=5) as (_, port):
        client = await RawClient.open(port)
        with capture_logs() as logs:
            await client.send(request("GET", "/endless"))
            await client.stream.receive_some(64 * KiB)
            await client.aclose()
            with trio.fail_after(WAIT):
                await closed.wait()
        async with httpx.AsyncClient() as other:
            assert (await other.get(f"http://127.0.0.1:{port}/")).content == b"still here"
    assert any(e["event"] == "http_connection_lost" for e in logs)


# ---- protocol errors and timeouts -------------------------------------------------------------


async def test_oversized_request_head_gets_431():
    async with serving(echo, max_header_bytes=4 * KiB) as (_, port):
        client = await RawClient.open(port)
        await client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 8 * KiB + b"\r\n\r\n")
        reply = await client.response()
        assert reply.status == 431 and reply.headers["connection"] == "close"
        assert await client.closed_by_server()


@pytest.mark.parametrize("garbage", [
    b"NOT HTTP AT ALL\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
])
async def test_malformed_request_gets_400(garbage):
    async with serving(echo) as (_, port):
        client = await RawClient.open(port)
        await client.send(garbage)
        reply = await client.response()
        assert reply.status == 400 and reply.headers["connection"] == "close"
        assert await client.closed_by_server()


async def test_incomplete_head_times_out_with_408():
    async with serving(echo, header_timeout=0.2, drain_timeout=0.2) as (_, port):
        client = await RawClient.open(port)
        await client.send(b"GET / HTTP/1.1\r\nHost: t\r\n")
        reply = await client.response()
        assert reply.status == 408
        assert await client.closed_by_server()


async def test_the_keep_alive_timer_cancels_each_wait_when_it_is_due(autojump_clock: trio.testing.MockClock):
    timer = KeepAliveTimer(5)
    start = trio.current_time()
    ended: dict[str, float] = {}

    async def idle(name: str, begins: float, stops: float | None = None) -> None:
        await trio.sleep_until(start + begins)
        with trio.CancelScope() as scope:
            timer.start(scope)
            if stops is None:
                await trio.sleep_forever()
            await trio.sleep_until(start + stops)
            timer.stop(scope)
            await trio.sleep(100)
        ended[name] = trio.current_time() - start

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer.run)
        nursery.start_soon(idle, "first", 0)
        nursery.start_soon(idle, "stopped", 0.5, 2)  # its request came in time
        nursery.start_soon(idle, "second", 1)
        nursery.start_soon(idle, "later", 20)  # after the queue was empty
        await trio.sleep(200)
        nursery.cancel_scope.cancel()
    assert ended == {"first": 5, "second": 6, "later": 25, "stopped": 102}


async def test_idle_keep_alive_connection_is_closed_after_its_timeout():
    async with serving(echo, keep_alive_timeout=0.2) as (_, port):
        client = await RawClient.open(port)
        sent = trio.current_time()  # the server's idle wait starts later, once its answer is out
        await client.send(request())
        assert (await client.response()).status == 200
        assert await client.closed_by_server()
        assert trio.current_time() - sent >= 0.2


async def test_connections_beyond_the_limit_wait_for_a_free_slot():
    async with serving(echo, max_connections=1) as (server, port):
        first = await RawClient.open(port)
        await first.send(request("GET", "/first"))
        assert (await first.response()).status == 200
        second = await RawClient.open(port)  # completes in the kernel's backlog
        await second.send(request("GET", "/second"))
        # Proving "not served" needs a window; 0.2 s is ample on loopback.
        with trio.move_on_after(0.2):
            await second.response()
            pytest.fail("served beyond max_connections")
        assert server.active_connections == 1
        await first.aclose()
        assert (await second.response()).headers["x-path"] == "/second"
        await second.aclose()


# ---- graceful shutdown ------------------------------------------------------------------------


async def test_shutdown_lets_requests_in_flight_finish_and_refuses_new_connections():
    entered, release = trio.Event(), trio.Event()

    async def handler(req: Request) -> Response:
        if req.path == "/slow":
            entered.set()
            await release.wait()
        return Response(200, [], req.path.encode())

    server = HTTPServer(handler, HTTPConfig(shutdown_timeout=WAIT))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(server.serve, "127.0.0.1", 0)
            idle = await RawClient.open(port)
            await idle.send(request("GET", "/idle"))
            assert (await idle.response()).status == 200
            busy = await RawClient.open(port)
            await busy.send(request("GET", "/slow"))
            await entered.wait()

            server.shutdown()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            assert await idle.closed_by_server()
            release.set()
            reply = await busy.response()
            assert (reply.status, reply.body, reply.headers["connection"]) == (200, b"/slow", "close")
            assert await busy.closed_by_server()
        # serve() returned: the nursery is done
    assert server.active_connections == 0


async def test_shutdown_cancels_a_stuck_request_at_the_deadline():
    entered, cancelled = trio.Event(), trio.Event()

    async def handler(req: Request) -> Response:
        entered.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    server = HTTPServer(handler, HTTPConfig(shutdown_timeout=0.3))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(server.serve, "127.0.0.1", 0)
            client = await RawClient.open(port)
            await client.send(request())
            await entered.wait()
            start = trio.current_time()
            server.shutdown()
        elapsed = trio.current_time() - start
    assert cancelled.is_set() and 0.3 <= elapsed < 0.3 + 2
    assert await client.closed_by_server()


async def test_invalid_response_headers_become_500_and_a_streamed_body_is_closed():
    closed = trio.Event()

    async def body():
        try:
            yield b"never sent"
        finally:
            closed.set()

    async def handler(req: Request) -> Response:
        gen = body()
        await gen.asend(None)  # started, so closing it runs its finally
        return Response(200, [("x-bad", "line\r\nbreak")], gen)

    async with serving(handler) as (_, port):
        client = await RawClient.open(port)
        with capture_logs() as logs:
            reply = await client.exchange(request())
        await client.aclose()
    assert reply.status == 500 and closed.is_set()
    assert any(e["event"] == "http_response_invalid" for e in logs)
