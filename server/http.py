"""The server's HTTP layer: the types handlers see, and the listening server.

    HTTPServer.serve ─ accept loop(s) ─ one task per connection (server.http_connection)
                                          └─ handler(Request) → Response

h11 does all parsing and framing; ``server.http_connection`` drives it for
one connection.  Limits and timeouts are trio deadlines from ``HTTPConfig``.
Shaped after ``trio.serve_listeners`` and hypercorn's ``worker_serve``: the
server owns a nursery of connections, ``shutdown()`` stops accepting, closes
idle keep-alive connections and gives requests in flight a deadline.
"""

from __future__ import annotations

import email.utils
import errno
import random
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus  # the standard library's, not this module

import h11
import structlog
import trio

KiB = 1024
MiB = 1024 * KiB
SECONDS = 1.0
RECEIVE_SIZE = 64 * KiB
BODY_RECEIVE_SIZE = 1024 * KiB  # reads while a request body streams in

log = structlog.get_logger()


@dataclass(frozen=True)
class HTTPConfig:
    max_header_bytes: int = 64 * KiB  # request head larger than this → 431
    header_timeout: float = 30 * SECONDS  # first byte → full head (also a fresh connection's first byte) → 408
    body_timeout: float = 60 * SECONDS  # no body progress this long → RequestTimeout, then close
    keep_alive_timeout: float = 75 * SECONDS  # idle between requests → close
    shutdown_timeout: float = 30 * SECONDS  # requests in flight at shutdown get this long
    max_connections: int = 1024  # beyond it the server stops accepting (the kernel backlog queues)
    send_timeout: float = 60 * SECONDS  # a client not reading the response this long → close
    drain_max_bytes: int = 1 * MiB  # unread request body the server discards to keep a connection
    drain_timeout: float = 2 * SECONDS  # ...and how long it waits for it (also the lingering close)


class RequestBody:
    """The request body, streamed: never held whole, read by the handler in pieces.

    ``content_length`` is the Content-Length header's value; None without one
    (a chunked body, or a request with no body framing, whose body is empty).
    """

    __slots__ = ("content_length", "bytes_read", "complete", "_source", "_poll", "_pending")
    _pending: bytes | bytearray | memoryview

    def __init__(
        self, source: Callable[[], Awaitable[bytes | None]], content_length: int | None,
        poll: Callable[[], bytes | None | type[h11.NEED_DATA]] | None = None,
    ) -> None:  # fmt: skip
        """``source``: the next piece, None at the end; ``poll``: the same without
        waiting, h11.NEED_DATA when it would have to (``take_whole``)."""
        self.content_length = content_length
        self.bytes_read = 0  # bytes taken out of the connection so far
        self.complete = False  # end of body seen
        self._source = source
        self._poll = poll
        self._pending = b""

    @classmethod
    def from_bytes(cls, *chunks: bytes) -> RequestBody:
        """A body that yields ``chunks``; for handler tests without a socket."""
        queue = list(chunks)

        async def source() -> bytes | None:
            await trio.lowlevel.checkpoint()
            return queue.pop(0) if queue else None

        return cls(source, sum(map(len, chunks)))

    async def read(self, max_bytes: int = 256 * KiB) -> bytes:
        """Up to ``max_bytes`` of the body; b"" at its end.

        The first read sends ``100 Continue`` when the client waits for it.
        Raises ``errors.IncompleteBody`` (client closed mid-body),
        ``errors.RequestTimeout`` (no body bytes within ``body_timeout``),
        ``errors.InvalidRequest`` (malformed chunked framing).
        """
        if not self._pending:
            if self.complete:
                return b""
            chunk = await self._source()
            if chunk is None:
                self.complete = True
                return b""
            self.bytes_read += len(chunk)
            self._pending = chunk
        data = self._pending
        if len(data) <= max_bytes:
            self._pending = b""
            return bytes(data)
        view = memoryview(data)  # split without copying the rest
        self._pending = view[max_bytes:]
        return bytes(view[:max_bytes])

    def take_whole(self) -> bytes | None:
        """The whole body, if it has all arrived (it came with the request head, as a
        small append's does) and none of it was read yet; else None, and ``read`` as usual.

        No await: a 1 KiB body otherwise passed through several async layers twice
        (its piece, then its end), a tenth of a small append's event-loop time."""
        if self._poll is None or self.bytes_read or self.complete or self.content_length is None:
            return None
        chunk = self._poll()
        if chunk is h11.NEED_DATA:
            return None
        if chunk is not None:
            self.bytes_read = len(chunk)
            # Once the last byte is out, h11 gives the body's end at once (None here).
            if self.bytes_read < self.content_length or self._poll() is not None:
                self._pending = chunk  # the rest is still to come
                return None
        self.complete = True
        return b"" if chunk is None else bytes(chunk)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    def __repr__(self) -> str:
        return f"RequestBody(content_length={self.content_length}, bytes_read={self.bytes_read}, complete={self.complete})"


@dataclass(slots=True)
class Request:
    """One request as the handler sees it: raw where S3 needs raw (SigV4 signs the
    path as sent), the body still in the socket."""

    method: str
    target: str  # raw request-target, latin-1
    path: str  # still percent-encoded
    query: str  # without '?', "" if none
    headers: list[tuple[str, str]]  # (lower-case name, value) in wire order
    http_version: str
    remote: tuple[str, int] | None
    body: RequestBody
    request_id: str = ""
    _first: dict[str, str] | None = field(default=None, repr=False, compare=False)

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        first = self._first
        if first is None:
            first = self.first_values()
        value = first.get(name)  # names are stored lower-case, and usually asked for so
        if value is None and not name.islower():
            value = first.get(name.lower())
        return default if value is None else value

    def first_values(self) -> dict[str, str]:
        """Header name (lower-case) → its first value; built on first use (a request
        asks for a dozen headers), shared with SigV4 verification."""
        first = self._first
        if first is None:
            first = self._first = dict(reversed(self.headers))
        return first


@dataclass(slots=True)
class Response:
    """What a handler answers.  Date, Server and a bytes body's Content-Length are added."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    # An async iterable is streamed; give it a content-length header, else it goes chunked.
    body: bytes | AsyncIterable[bytes] = b""


Handler = Callable[[Request], Awaitable[Response]]


class ShutdownSignal:
    """Shared by a server and its connections: set once; wakes idle connections."""

    def __init__(self) -> None:
        self.requested = False
        self.idle_scopes: set[trio.CancelScope] = set()

    def trigger(self) -> None:
        self.requested = True
        for scope in self.idle_scopes:
            scope.cancel()


class KeepAliveTimer:
    """The keep-alive timeout of every idle connection, kept by one task (``run``).

    Every keep-alive wait lasts ``timeout``, so they expire in the order they
    began: an insertion-ordered dict is their queue, and one task sleeps until
    the oldest is due and cancels the scopes whose time is up.  Why not a deadline
    on each connection's scope: setting one and clearing it again is two trips
    through trio's deadline bookkeeping per request (a context manager and a heap
    entry each), more than this whole queue costs.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._waiting: dict[trio.CancelScope, float] = {}  # scope -> when it is due, oldest first
        self._woken: trio.Event | None = None  # set when the queue stops being empty

    def __repr__(self) -> str:
        return f"KeepAliveTimer(timeout={self.timeout}, waiting={len(self._waiting)})"

    def start(self, scope: trio.CancelScope) -> None:
        """``scope`` is cancelled ``timeout`` from now unless ``stop`` comes first."""
        self._waiting[scope] = trio.current_time() + self.timeout
        if self._woken is not None:
            self._woken.set()
            self._woken = None

    def stop(self, scope: trio.CancelScope) -> None:
        self._waiting.pop(scope, None)

    async def run(self) -> None:
        """Cancel each waiting scope when it is due; never returns."""
        waiting = self._waiting
        while True:
            if not waiting:
                self._woken = trio.Event()
                await self._woken.wait()
                continue
            scope, due = next(iter(waiting.items()))
            if due > trio.current_time():
                await trio.sleep_until(due)  # the oldest may be gone by then: look again
                continue
            del waiting[scope]
            scope.cancel()


_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_REASON_TEXT = {s.value: s.phrase for s in HTTPStatus}
_date_cache: list = [0, b"", ""]

# Headers h11 must see to frame the response (and to know whether the connection
# stays open); every other header is rendered here, in one pass.
_FRAMING = frozenset(("content-length", "transfer-encoding", "connection"))
# The same grammar h11 enforces on header names and values (its _abnf.py: token;
# field-content without NUL or line breaks, inner runs of SP/HTAB), as one
# pattern over a whole rendered block: one regex call per response, not two per header.
_HEADER_BLOCK = re.compile(rb"(?:[-!#$%&'*+.^_`|~0-9a-zA-Z]+: (?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?\r\n)*")


def http_date() -> bytes:
    """The Date header value, formatted at most once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[2] = email.utils.formatdate(now, usegmt=True)
        _date_cache[1] = _date_cache[2].encode()
    return _date_cache[1]


def new_request_id() -> str:
    """16 upper-case hex characters, as S3 request ids look."""
    return "%016X" % random.getrandbits(64)


def plain_response(status: int, text: str) -> Response:
    return Response(status, [("content-type", "text/plain; charset=utf-8")], text.encode())


def _render_headers(headers: list[tuple[str, str]]) -> tuple[bytes, list[tuple[str, str]]]:
    """(every non-framing header as validated wire lines, with Date and Server added;
    the framing headers as given).  Raises h11.LocalProtocolError for a name or
    value h11 itself would refuse."""
    framing = []
    lines = []
    seen_date = seen_server = False
    suspect = False
    for name, value in headers:
        if name in _PLAIN_NAMES:  # the usual header: a name seen valid, lower-case, neither framing nor Date/Server
            if not value.isprintable() or value[:1] == " " or value[-1:] == " ":
                suspect = True
            lines.append(f"{name}: {value}\r\n")
            continue
        lname = name.lower()
        if lname in _FRAMING:
            framing.append((lname, value))
            continue
        if lname == "date":
            seen_date = True
        elif lname == "server":
            seen_server = True
        if name not in _GOOD_NAMES or not value.isprintable() or value[:1] == " " or value[-1:] == " ":
            suspect = True  # not plainly fine (a new name, a tab, a control or non-printing character): check it all
        lines.append(f"{name}: {value}\r\n")
    if not seen_date:
        http_date()
        lines.append(f"date: {_date_cache[2]}\r\n")
    if not seen_server:
        lines.append("server: tailbucket\r\n")
    block = "".join(lines).encode("utf-8", "surrogateescape")
    if suspect:
        if _HEADER_BLOCK.fullmatch(block) is None:
            raise h11.LocalProtocolError(f"illegal response header in {block!r}")
        if len(_GOOD_NAMES) < 4096:  # names come from code and stored metadata: few, and worth remembering
            _GOOD_NAMES.update(name for name, _ in headers)
            _PLAIN_NAMES.update(
                name for name, _ in headers if name.islower() and name not in _FRAMING and name not in ("date", "server")
            )
    return block, framing


_GOOD_NAMES: set[str] = set()  # header names seen to pass h11's grammar
_PLAIN_NAMES: set[str] = set()  # those of them in lower case, not framing, Date or Server: rendered as they are


def response_head(response: Response, *, close: bool) -> tuple[h11.Response, bytes]:
    """The response head in two parts: an h11 event with the status and framing
    headers (h11 frames the body and tracks the exchange), and every other header
    rendered as wire lines, with Date and Server added.

    The connection sends h11's bytes for the event with these lines spliced in
    before its final blank line.  Raises h11.LocalProtocolError for a header
    name or value h11 itself would refuse.
    """
    status = response.status
    block, given = _render_headers(response.headers)
    framing = [(name.encode("latin-1"), value.encode("utf-8", "surrogateescape")) for name, value in given]
    body = response.body
    if not any(name == "content-length" for name, _ in given) and isinstance(body, (bytes, bytearray, memoryview)) \
            and status not in (204, 304) and status >= 200:
        framing.append((b"content-length", str(len(body)).encode()))
    if close:
        framing.append((b"connection", b"close"))
    return _framing_event(status, tuple(framing)), block


def encode_response(response: Response, *, head_only: bool, close: bool) -> bytes | None:
    """The whole response as wire bytes, framed here rather than by h11: a bytes
    body (none for HEAD, 204, 304) with a Content-Length.  None when h11 should
    frame it (a streamed body, a Transfer-Encoding or Connection header from the
    handler, a Content-Length that does not match the body, a 1xx status): then
    the caller sends ``response_head`` through h11, which also refuses what is wrong.

    Why: h11's send path (event, state machine, writer) costs more per response
    than rendering it; h11 still parses requests and reads bodies.  Raises
    h11.LocalProtocolError for a header h11 itself would refuse.
    """
    status = response.status
    body = response.body
    if status < 200 or not isinstance(body, (bytes, bytearray, memoryview)):
        return None
    block, framing = _render_headers(response.headers)
    length = None
    for name, value in framing:
        if name != "content-length" or length is not None or not value.isascii() or not value.isdigit():
            return None
        length = value
    no_body = status in (204, 304)
    if no_body:
        if body:
            return None
    elif length is None:
        length = str(len(body))
    elif not head_only and int(length) != len(body):
        return None
    head = f"HTTP/1.1 {status} {_REASON_TEXT.get(status, '')}\r\n"
    if length is not None:
        head += f"content-length: {length}\r\n"
    if close:
        head += "connection: close\r\n"
    wire = head.encode("latin-1") + block + b"\r\n"
    if body and not head_only and not no_body:
        wire += body
    return wire


_framing_events: dict[tuple[int, tuple[tuple[bytes, bytes], ...]], h11.Response] = {}


def _framing_event(status: int, framing: tuple[tuple[bytes, bytes], ...]) -> h11.Response:
    """h11's Response for a status and framing headers, built (and validated) once:
    h11 events are immutable, and most responses share a few (200 with no body...)."""
    key = (status, framing)
    event = _framing_events.get(key)
    if event is None:
        event = h11.Response(status_code=status, headers=list(framing), reason=_REASONS.get(status, b""))
        if len(_framing_events) >= 1024:  # bodies of many lengths: keep the table small
            _framing_events.clear()
        _framing_events[key] = event
    return event


# accept() errors that mean "out of resources right now": back off and retry,
# as trio.serve_listeners does, rather than crash the server.
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_BACKOFF = 0.1 * SECONDS


class HTTPServer:
    """Serves ``handler`` over HTTP/1.1 until ``shutdown()``.

    At ``max_connections`` open connections the server stops calling accept()
    until one closes: new clients wait in the kernel's listen backlog instead
    of being refused.
    """

    def __init__(self, handler: Handler, config: HTTPConfig = HTTPConfig()) -> None:
        from server.http_connection import HTTPConnection  # deferred: that module imports this one

        self._connection_class = HTTPConnection
        self.handler = handler
        self.config = config
        self._signal = ShutdownSignal()
        self._keep_alive = KeepAliveTimer(config.keep_alive_timeout)
        self._slots = trio.Semaphore(config.max_connections)
        self._listeners: list[trio.SocketListener] = []
        self._accept_scope: trio.CancelScope | None = None
        self.address: tuple[str, int] | None = None
        self.active_connections = 0

    def __repr__(self) -> str:
        state = "shutting down" if self._signal.requested else ("serving" if self.address else "not started")
        return f"HTTPServer({state}, address={self.address}, active_connections={self.active_connections})"

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Bind (port 0 picks one), report ``(host, port)`` via ``task_status.started``
        once accepting, and return only after ``shutdown()`` has completed."""
        self._listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            async with trio.open_nursery() as connections:
                with trio.CancelScope() as self._accept_scope:
                    async with trio.open_nursery() as acceptors:
                        acceptors.start_soon(self._keep_alive.run)  # idle connections left at shutdown are closed by it
                        for listener in self._listeners:
                            acceptors.start_soon(self._accept_loop, listener, connections)
                        self.address = (host, self._listeners[0].socket.getsockname()[1])
                        log.info("http_listening", host=host, port=self.address[1])
                        task_status.started(self.address)
                        if self._signal.requested:
                            self._accept_scope.cancel()
                # Accepting stopped: shutdown() was called.  Requests in flight get a deadline.
                connections.cancel_scope.deadline = trio.current_time() + self.config.shutdown_timeout
            log.info("http_shutdown_complete", forced=connections.cancel_scope.cancelled_caught)
        finally:
            for listener in self._listeners:
                await trio.aclose_forcefully(listener)

    def shutdown(self) -> None:
        """Stop accepting (new connections are refused from now on), close idle
        keep-alive connections, give requests in flight ``shutdown_timeout``."""
        if self._signal.requested:
            return
        log.info("http_shutdown_started", active_connections=self.active_connections)
        self._signal.trigger()
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        for listener in self._listeners:
            listener.socket.close()  # synchronous, so connects fail as soon as this returns

    async def _accept_loop(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        while True:
            await self._slots.acquire()
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                self._slots.release()
                return
            except OSError as exc:
                self._slots.release()
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error("http_accept_error", error=str(exc), backoff=_ACCEPT_BACKOFF)
                await trio.sleep(_ACCEPT_BACKOFF)  # a back-off, not a wait for an event
                continue
            except BaseException:
                self._slots.release()
                raise
            connections.start_soon(self._run_connection, stream)

    async def _run_connection(self, stream: trio.SocketStream) -> None:
        self.active_connections += 1
        try:
            await self._connection_class(stream, self.handler, self.config, self._signal, self._keep_alive).run()
        finally:
            self.active_connections -= 1
            self._slots.release()
