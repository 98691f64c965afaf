"""A lean HTTP/1.1 transport for ``http://`` endpoints: h11 on trio sockets, keep-alive, no TLS.

httpx's default transport (httpcore + h11) costs about a millisecond of CPU
per request here, mostly in layers a small S3 request does not need, and it
writes the head and the body of a request in two ``send`` calls.  An agent
appending to a thousand objects makes hundreds of such requests a second, so
for plain-HTTP endpoints (a sidecar, a server on the same host or network)
``PlainHTTPTransport`` drives h11 directly: h11 frames the request and parses
the answer (we never parse HTTP by hand), the head and a small body go out in
one write, and connections are kept alive in a pool.  It is an
``httpx.AsyncBaseTransport``, so everything above it (auth, health, errors) is
unchanged; https endpoints keep httpx's own.  ``exchange`` is the same
round trip without httpx's request and response objects (a third of what
is left per request): ``sink.client`` sends the requests it signs that way.

Failures are httpx's exceptions (``ConnectError``, ``ReadError``,
``ReadTimeout``, ``RemoteProtocolError``...), as the client above expects.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import h11
import httpx
import trio

JOIN_BODY_BELOW = 256 * 1024  # smaller bodies are sent in the same write as the head
READ_SIZE = 64 * 1024
RECHECK_IDLE = 1.0  # seconds idle after which a pooled connection is checked for a close by the server


class _Connection:
    """One keep-alive connection and its h11 state machine."""

    __slots__ = ("stream", "h11", "idle_since", "ended")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.ended = False  # the server closed its side (an answer ended by the close, say)

    def reusable(self) -> bool:
        """Both sides done with a keep-alive exchange, the server still there: ready for the next one.
        (h11 says MUST_CLOSE after ``Connection: close``, but DONE after an answer ended by the close.)"""
        if not self.ended and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    async def next_event(self) -> h11.Event:
        """h11's next event of the answer, reading from the socket as it needs (the caller's cancel
        scope holds the read deadline: one per exchange, not one per read)."""
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpx.RemoteProtocolError(f"bad answer: {exc}") from exc
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.receive_some(READ_SIZE)
            self.ended = not data
            self.h11.receive_data(data)


class Answer:
    """A whole answer, as ``exchange`` returns it: what ``sink.client`` reads of an ``httpx.Response``.
    Header names are lower-case (h11's), one value each."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]], content: bytes) -> None:
        self.status_code = status_code
        self.headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
        self.content = content

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def __repr__(self) -> str:
        return f"<Answer {self.status_code} {len(self.content)} bytes>"


Timeouts = tuple[float, float, float]  # connect, read, write: seconds (math.inf: no limit)


def timeouts_of(timeout: dict[str, float | None]) -> Timeouts:
    """(connect, read, write) from httpx's timeout dict (None: no limit)."""
    return tuple(math.inf if timeout.get(k) is None else timeout[k] for k in ("connect", "read", "write"))  # type: ignore[return-value]


def _request_head(method: str, target: bytes, headers: Sequence[tuple[str | bytes, str | bytes]]) -> h11.Request:
    try:
        return h11.Request(method=method, target=target, headers=headers)
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc)) from exc


def _timeouts(request: httpx.Request) -> tuple[float, float, float]:
    """(connect, read, write) seconds from the request's timeout extension (None: no limit)."""
    return timeouts_of(request.extensions.get("timeout", {}))


class PlainHTTPTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 over plain TCP, at most ``max_connections`` at once."""

    def __init__(self, max_connections: int = 8, *, recheck_idle: float = RECHECK_IDLE) -> None:
        self._slots = trio.Semaphore(max_connections)
        self._recheck_idle = recheck_idle
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"PlainHTTPTransport serves http:// only, not {request.url.scheme}://")
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        head = _request_head(request.method, request.url.raw_path, request.headers.raw)
        status, headers, content = await self._round_trip(request.url, head, body, _timeouts(request))
        return httpx.Response(status, headers=headers, content=content, request=request,
                              extensions={"http_version": b"HTTP/1.1"})

    async def exchange(self, method: str, url: httpx.URL, headers: list[tuple[str, str]], body: bytes,
                       timeouts: Timeouts) -> Answer:
        """One request and its whole answer, with no httpx objects: ``headers`` go as they are
        (``Host`` and the framing header included), h11 frames them."""
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"PlainHTTPTransport serves http:// only, not {url.scheme}://")
        head = _request_head(method, url.raw_path, headers)
        return Answer(*await self._round_trip(url, head, body, timeouts))

    async def _round_trip(self, url: httpx.URL, head: h11.Request, body: bytes,
                          timeouts: Timeouts) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        connect, read, write = timeouts
        try:
            self._slots.acquire_nowait()  # a free connection slot without a yield: the request yields soon
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            address = (url.host, url.port or 80)
            connection = await self._connection(address, connect)
            try:
                answer = await self._exchange(connection, head, body, read, write)
            except BaseException:
                await trio.aclose_forcefully(connection.stream)
                raise
            if connection.reusable() and not self._closed:
                connection.idle_since = trio.current_time()
                self._idle.setdefault(address, deque()).append(connection)
            else:
                await trio.aclose_forcefully(connection.stream)
        finally:
            self._slots.release()
        return answer

    async def _connection(self, address: tuple[str, int], timeout: float) -> _Connection:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()  # the most recently used: least likely to have been closed
            stale = trio.current_time() - connection.idle_since >= self._recheck_idle
            if stale and connection.stream.socket.is_readable():
                await trio.aclose_forcefully(connection.stream)  # closed (or talking) while idle
                continue
            return connection
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(*address)
        except trio.TooSlowError:
            raise httpx.ConnectTimeout(f"connecting to {address[0]}:{address[1]} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"{address[0]}:{address[1]}: {exc}") from exc
        return _Connection(stream)

    async def _exchange(
        self, connection: _Connection, request: h11.Request, body: bytes, read: float, write: float
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        conn = connection.h11
        try:
            head = conn.send(request)
            pieces = conn.send_with_data_passthrough(h11.Data(data=body)) if body else []
            end = conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise httpx.LocalProtocolError(str(exc)) from exc
        answer = None
        reading = False
        # One cancel scope for the exchange: the write deadline, then the read deadline.
        with trio.CancelScope(deadline=trio.current_time() + write) as scope:
            try:
                if len(body) < JOIN_BODY_BELOW:
                    await connection.stream.send_all(b"".join([head, *pieces, end]))
                else:
                    await connection.stream.send_all(head)
                    for piece in pieces:
                        await connection.stream.send_all(piece)
                    if end:
                        await connection.stream.send_all(end)
            except (trio.BrokenResourceError, OSError) as exc:
                raise httpx.WriteError(f"the connection broke while sending: {exc}") from exc
            reading = True
            scope.deadline = trio.current_time() + read
            try:
                answer = await self._read_response(connection)
            except (trio.BrokenResourceError, OSError) as exc:
                raise httpx.ReadError(f"the connection broke while reading the answer: {exc}") from exc
        if scope.cancelled_caught or answer is None:  # the scope's deadline passed
            if reading:
                raise httpx.ReadTimeout("no answer within the read timeout")
            raise httpx.WriteTimeout("the request was not written within the write timeout")
        return answer

    async def _read_response(self, connection: _Connection) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response: h11.Response | None = None
        parts: list[bytes] = []
        while True:
            event = await connection.next_event()
            if type(event) is h11.Response:
                response = event
            elif type(event) is h11.Data:
                parts.append(event.data)
            elif type(event) is h11.EndOfMessage:
                assert response is not None
                return response.status_code, list(response.headers), b"".join(parts)
            elif type(event) is h11.ConnectionClosed:
                raise httpx.RemoteProtocolError("the server closed the connection without a whole answer")
            # h11.InformationalResponse (100 Continue...): the real answer follows

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await trio.aclose_forcefully(connection.stream)
