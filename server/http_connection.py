"""One client connection: h11 parses and frames, this loop feeds it and waits.

One task per connection, one request at a time: pipelined requests wait in
h11's buffer (h11 returns PAUSED until ``start_next_cycle``).  Every wait is
bounded by a trio deadline from ``HTTPConfig``; nothing here sleeps.  The
waits that end the connection when they expire (idle, request head, send)
share one cancel scope, which is cheaper per request than a new scope each:
a kept-alive connection's idle wait is timed by the server's shared
``KeepAliveTimer``, the others move the scope's deadline; body reads get their
own scope so the handler can answer.  A kept-alive client's next request is
read without any wait when it is already there after the other connections'
turn, as it usually is under load.  Like
hypercorn's h11 protocol, a connection that cannot be reused is closed, and
one whose client may still be sending is closed *lingering* (write side shut,
input discarded for a bounded time) so the response is not lost to a reset.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterable

import h11
import structlog
import trio

from server import errors
from server.http import (
    BODY_RECEIVE_SIZE, RECEIVE_SIZE, Handler, HTTPConfig, KeepAliveTimer, Request, RequestBody, Response, ShutdownSignal,
    encode_response, new_request_id, plain_response, response_head,
)

log = structlog.get_logger()

_END = h11.EndOfMessage()  # immutable: one instance serves every response


def _splice(head: bytes, lines: bytes) -> bytes:
    """h11's head (status line, framing headers, blank line) with the other header lines before the blank line."""
    return head[:-2] + lines + b"\r\n"


def _keeps_alive(request: Request) -> bool:
    """Whether the client lets the connection stay open after this exchange: h11's
    rule (HTTP/1.1 and no ``Connection: close``), needed where h11 does not frame the response."""
    if request.http_version != "1.1":
        return False
    connection = request.header("connection")
    return connection is None or "close" not in (token.strip() for token in connection.lower().split(","))


def _head_size(event: h11.Request, raw_headers: list[tuple[bytes, bytes]]) -> int:
    """The request head's size on the wire, give or take the request line's spaces."""
    size = len(event.method) + len(event.target) + 12
    for name, value in raw_headers:
        size += len(name) + len(value) + 4
    return size


class ConnectionLost(Exception):
    """The socket broke, or the client stopped reading: nothing more can be sent."""


class HTTPConnection:
    """Serves requests on one stream until either side is done with it."""

    def __init__(
        self, stream: trio.SocketStream, handler: Handler, config: HTTPConfig, signal: ShutdownSignal,
        keep_alive: KeepAliveTimer,
    ) -> None:  # fmt: skip
        self.stream = stream
        self.handler = handler
        self.config = config
        self.signal = signal
        self.keep_alive = keep_alive
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.max_header_bytes)
        self._unparsed = False  # h11 may hold bytes of the next request (else: it needs data first)
        self._fed = 0  # bytes given to this h11 connection: a request head in them is no longer
        self.linger = False  # the client may still be sending: close lingering
        self.peer_closed = False  # EOF or reset seen on the socket
        self.body_failed = False  # a body read raised (timeout, bad framing): this connection is done
        self.requests = 0
        self._fd = stream.socket.fileno()
        self._io = trio.CancelScope()  # its deadline guards the wait named by _waiting
        self._waiting = ""  # "idle" | "head" | "send"
        self._framed_here = False  # the last response was framed by encode_response, not sent through h11
        try:
            self.remote: tuple[str, int] | None = tuple(stream.socket.getpeername()[:2])  # type: ignore[assignment]
        except OSError:
            self.remote = None

    def __repr__(self) -> str:
        return f"HTTPConnection(remote={self.remote}, requests={self.requests}, states={self.conn.states})"

    async def run(self) -> None:
        """Serve requests, then close; never raises (but lets cancellation through)."""
        try:
            with self._io:
                await self._serve_requests()
            if self._io.cancelled_caught:
                await self._after_io_deadline()
            elif self.linger and not self.peer_closed:
                await self._linger()
        except ConnectionLost as exc:
            log.info("http_connection_lost", remote=self.remote, reason=str(exc))
        except Exception:
            log.error("http_connection_error", remote=self.remote, exc_info=True)
        finally:
            await trio.aclose_forcefully(self.stream)

    async def _after_io_deadline(self) -> None:
        """The shared deadline fired (or shutdown woke an idle connection): say why, and close."""
        if self._waiting == "head":
            log.info("http_header_timeout", remote=self.remote)
            with trio.move_on_after(self.config.drain_timeout):
                await self.stream.send_all(self._encode(plain_response(408, "Request Timeout\n"), close=True))
                await self._linger()
        elif self._waiting == "send":
            log.info("http_send_timeout", remote=self.remote)

    # ---- the request cycle ------------------------------------------------

    async def _serve_requests(self) -> None:
        while True:
            try:
                head = await self._receive_head()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                log.info("http_protocol_error", remote=self.remote, status=status, error=str(exc))
                if not self.peer_closed:
                    text = "Request Header Fields Too Large\n" if status == 431 else "Bad Request\n"
                    self.linger = True
                    await self._send(self._encode(plain_response(status, text), close=True))
                return
            if head is None:
                return
            self.requests += 1
            if not await self._handle(*head):
                return
            if self._framed_here:  # h11 did not see the response: a fresh h11 for the next request
                trailing, closed = self.conn.trailing_data
                self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.config.max_header_bytes)
                self._fed = len(trailing)
                if trailing:
                    self.conn.receive_data(trailing)
                if closed:
                    self.conn.receive_data(b"")
                self._unparsed = bool(trailing) or closed
            else:
                self.conn.start_next_cycle()
                self._unparsed = True

    async def _receive_head(self) -> tuple[h11.Request, list[tuple[bytes, bytes]]] | None:
        """The next request head and its headers as received, or None when the connection should just close."""
        conn = self.conn
        io = self._io
        event = conn.next_event() if self._unparsed else h11.NEED_DATA
        if event is h11.NEED_DATA:
            await self._receive_while_idle()
            if (event := conn.next_event()) is h11.NEED_DATA:
                self._waiting = "head"  # the first bytes came: the rest of the head must follow in time
                io.deadline = trio.current_time() + self.config.header_timeout
                while (event := conn.next_event()) is h11.NEED_DATA:
                    await self._receive()
        else:
            await trio.lowlevel.checkpoint()  # pipelined: let other connections run between requests
        if io.deadline != math.inf:
            io.deadline = math.inf
        self._waiting = ""
        if type(event) is not h11.Request:
            return None  # ConnectionClosed
        # Headers as a plain list: iterating h11's Headers goes through Sequence.__iter__
        # and a Python __getitem__ per header, twice per request here.
        raw_headers = event.headers.raw_items()
        limit = self.config.max_header_bytes
        if self._fed > limit and _head_size(event, raw_headers) > limit:
            # h11 enforces the limit only on a head still incomplete; this one came in one read.
            raise h11.RemoteProtocolError("request head too large", error_status_hint=431)
        return event, raw_headers

    async def _receive_while_idle(self) -> None:
        """Wait for a request's first bytes, cancelled by the idle timeout (a fresh
        connection's is ``header_timeout``; a kept-alive one's runs on the shared
        ``KeepAliveTimer``) or by shutdown."""
        io = self._io
        kept_alive = self.requests > 0
        if kept_alive and await self._receive_if_there():
            return
        if kept_alive:
            self.keep_alive.start(io)
        else:
            io.deadline = trio.current_time() + self.config.header_timeout
        self._waiting = "idle"
        if self.signal.requested:
            io.cancel()
        self.signal.idle_scopes.add(io)
        try:
            await self._receive(idle=True)
        finally:
            self.signal.idle_scopes.discard(io)
            if kept_alive:
                self.keep_alive.stop(io)

    async def _receive_if_there(self) -> bool:
        """Let the other connections run, then read a kept-alive client's next request
        if it has come meanwhile (trio's ``receive_some`` also tries before it waits).

        Why: under load it has mostly come by then (7 in 10 with 16 connections of
        small appends here), and a readiness wait costs an ``epoll_ctl`` plus trio's
        I/O bookkeeping and the keep-alive timer per request: the event loop's CPU
        per small append fell 1-15% in same-run A/Bs (syscalls per request 4.0 -> 3.0).
        A miss costs a failed read and a turn, mostly when the loop has time to
        spare.  False (nothing read): wait as usual.
        """
        await trio.lowlevel.checkpoint()
        if self.signal.requested:
            return False  # the usual wait ends at once: no new request is started
        try:
            data = os.read(self._fd, RECEIVE_SIZE)
        except BlockingIOError:
            return False
        except OSError:  # a reset: the end of the connection, as in _receive
            data = b""
        self._feed(data)
        return True

    def _feed(self, data: bytes) -> None:
        """Give h11 what the socket gave (b"": the client is gone)."""
        if not data:
            self.peer_closed = True
        self._fed += len(data)
        self.conn.receive_data(data)

    async def _receive(self, *, idle: bool = False, size: int = RECEIVE_SIZE) -> None:
        """Feed h11 the next bytes from the socket (b"" at EOF or on a reset).

        The raw fd, not SocketStream.receive_some or trio's socket recv: this is the
        hot path, and their per-call wrappers cost more than the h11 parse of a small
        request.  ``idle``: waiting for a client's next request, not there yet (for
        a kept-alive client ``_receive_if_there`` looked) -- wait for readability
        first instead of failing a read.  Either way this is a checkpoint, as trio's recv is.
        ``size``: BODY_RECEIVE_SIZE while a body streams in (fewer trips through
        this loop and h11 per MiB; ``sink.heap`` keeps such buffers cheap).
        """
        fd = self._fd
        try:
            if idle:
                await trio.lowlevel.wait_readable(fd)
            while True:
                try:
                    data = os.read(fd, size)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(fd)
                    idle = True
                    continue
                break
        except (OSError, trio.ClosedResourceError):
            data, idle = b"", True
        if not idle:
            await trio.lowlevel.cancel_shielded_checkpoint()  # read without waiting: still let others run
        self._feed(data)

    async def _handle(self, event: h11.Request, raw_headers: list[tuple[bytes, bytes]]) -> bool:
        """Run the handler for one request and answer it; True to keep the connection."""
        content_length = None
        headers = []
        for raw_name, value in raw_headers:
            name = raw_name.lower()  # as h11's own view of them
            if name == b"content-length":
                content_length = int(value)
            headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        body = RequestBody(self._next_body_chunk, content_length, self._buffered_body_chunk)
        request = Request(
            event.method.decode("latin-1"), target, path, query, headers,
            event.http_version.decode("latin-1"), self.remote, body, new_request_id(),
        )
        try:
            response = await self.handler(request)
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not Response")
        except errors.S3Error as exc:  # normally the router's job; this is the last resort
            log.warning("http_handler_s3_error", request_id=request.request_id, code=exc.code, path=request.path)
            response = plain_response(exc.status, f"{exc.code}: {exc.message}\n")
        except Exception:
            log.error("http_handler_error", request_id=request.request_id, method=request.method,
                      path=request.path, exc_info=True)
            response = plain_response(500, "Internal Server Error\n")
        return await self._respond(request, response)

    async def _next_body_chunk(self) -> bytes | None:
        """The next piece of the request body from h11, None at its end (RequestBody's source)."""
        conn = self.conn
        while (chunk := self._buffered_body_chunk()) is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                try:
                    await self._send(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                except ConnectionLost as exc:
                    self.body_failed = True
                    raise errors.IncompleteBody() from exc
            with trio.move_on_after(self.config.body_timeout):
                await self._receive(size=BODY_RECEIVE_SIZE)
                continue
            self.body_failed = True
            raise errors.RequestTimeout()
        return chunk  # type: ignore[return-value]

    def _buffered_body_chunk(self) -> bytes | None | type[h11.NEED_DATA]:
        """The next piece of the request body that h11 already holds, None at its end,
        h11.NEED_DATA when the socket must be read first (RequestBody's ``poll``: no await)."""
        try:
            event = self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            self.body_failed = True
            if self.peer_closed:
                raise errors.IncompleteBody() from exc
            raise errors.InvalidRequest(f"Malformed request body: {exc}") from exc
        if event is h11.NEED_DATA:
            return h11.NEED_DATA
        if type(event) is h11.Data:
            return event.data
        if type(event) is h11.EndOfMessage:
            return None
        raise errors.IncompleteBody()  # ConnectionClosed cannot come mid-body; be safe

    # ---- the response -----------------------------------------------------

    async def _respond(self, request: Request, response: Response) -> bool:
        conn = self.conn
        body = request.body
        close = self.signal.requested
        drain = False
        unread = self._discard_buffered_body() if conn.their_state is h11.SEND_BODY else 0
        if conn.their_state is h11.SEND_BODY:  # the handler answered before the client sent the whole body
            length = body.content_length
            remaining = None if length is None else length - body.bytes_read - unread
            if self.body_failed or conn.they_are_waiting_for_100_continue or remaining is None \
                    or remaining > self.config.drain_max_bytes:
                close = self.linger = True  # don't read a body nobody wants; don't reset the client either
            else:
                drain = True
        elif conn.their_state is not h11.DONE:  # the body broke (client gone, bad framing)
            if self.peer_closed:
                return False  # nobody to answer
            close = True
        head_only = request.method == "HEAD"
        close = close or not _keeps_alive(request)
        await self._send_response(response, head_only=head_only, close=close)
        if drain and not close:
            if not await self._drain():
                self.linger = True
                return False
        if self._framed_here:
            return not close and conn.their_state is h11.DONE
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _discard_buffered_body(self) -> int:
        """Skip body bytes h11 already holds (often just the end of an empty body); no I/O."""
        discarded = 0
        try:
            while type(event := self.conn.next_event()) is h11.Data:
                discarded += len(event.data)
        except h11.RemoteProtocolError:
            pass  # their state is now ERROR: the connection closes after the response
        return discarded

    async def _send_response(self, response: Response, *, head_only: bool, close: bool) -> None:
        conn = self.conn
        given_body = response.body
        self._framed_here = False
        try:
            try:
                wire = encode_response(response, head_only=head_only, close=close)
                if wire is None:
                    head, lines = response_head(response, close=close)
            except (h11.LocalProtocolError, UnicodeEncodeError, TypeError, ValueError, AttributeError):
                # A handler bug caught before anything is sent (header names and values are validated).
                log.error("http_response_invalid", remote=self.remote, status=response.status, exc_info=True)
                response = plain_response(500, "Internal Server Error\n")
                wire = encode_response(response, head_only=head_only, close=close)
            if wire is not None:
                self._framed_here = True
                await self._send(wire)
                return
            body = response.body
            streamed = not isinstance(body, (bytes, bytearray, memoryview))
            try:
                out = _splice(conn.send(head), lines)
                if not streamed:
                    if body and not head_only and response.status not in (204, 304):
                        out += conn.send(h11.Data(data=body))
                    out += conn.send(_END)
            except h11.LocalProtocolError:  # e.g. a body longer than its Content-Length
                log.error("http_response_invalid", remote=self.remote, status=response.status, exc_info=True)
                raise ConnectionLost("invalid response") from None
            if not streamed:
                await self._send(out)
            elif head_only:
                await self._send(out + conn.send(_END))
            else:
                await self._send_stream(out, body)  # type: ignore[arg-type]
        finally:
            if hasattr(given_body, "aclose"):  # a streamed body gets closed however the send ended
                with trio.move_on_after(self.config.drain_timeout) as scope:
                    scope.shield = True
                    await given_body.aclose()  # type: ignore[union-attr]

    async def _send_stream(self, head: bytes, body: AsyncIterable[bytes]) -> None:
        conn = self.conn
        pending = head  # sent with the first chunk when that is small: one packet for small objects
        try:
            async for chunk in body:
                if not chunk:
                    continue
                await trio.lowlevel.checkpoint()  # _send's fast path does not yield; a fast client must not starve others
                pieces = conn.send_with_data_passthrough(h11.Data(data=chunk))
                data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                if pending and len(data) <= 16 * 1024:
                    data, pending = pending + data, b""
                elif pending:
                    await self._send(pending)
                    pending = b""
                await self._send(data)
            await self._send(pending + conn.send(_END))
        except (ConnectionLost, trio.Cancelled):
            raise
        except h11.LocalProtocolError as exc:
            log.error("http_response_stream_invalid", remote=self.remote, error=str(exc))
            raise ConnectionLost("response body does not match its framing") from None
        except Exception:
            log.error("http_response_stream_error", remote=self.remote, exc_info=True)
            raise ConnectionLost("response body failed") from None

    async def _send(self, data: bytes) -> None:
        """Send all of ``data`` within ``send_timeout``.  Fast path: a non-blocking write
        the kernel takes whole (the usual case for a small response) needs no deadline."""
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.conn.send_failed()
            raise ConnectionLost(f"client disconnected: {exc}") from None
        if sent == len(data):
            return
        io = self._io
        io.deadline = trio.current_time() + self.config.send_timeout
        self._waiting = "send"
        try:
            await self.stream.send_all(memoryview(data)[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.conn.send_failed()
            raise ConnectionLost(f"client disconnected: {exc}") from None
        io.deadline = math.inf
        self._waiting = ""

    def _encode(self, response: Response, *, close: bool) -> bytes:
        """A whole bytes response, for answers that never reached a handler."""
        conn = self.conn
        head, lines = response_head(response, close=close)
        return _splice(conn.send(head), lines) + conn.send(h11.Data(data=response.body)) + conn.send(_END)

    async def _drain(self) -> bool:
        """Discard the rest of an unread request body (bounded); True when it all came."""
        drained = 0
        with trio.move_on_after(self.config.drain_timeout):
            try:
                while (chunk := await self._next_body_chunk()) is not None:
                    drained += len(chunk)
                    if drained > self.config.drain_max_bytes:
                        return False
                return True
            except errors.S3Error:
                return False
        return False

    async def _linger(self) -> None:
        """Shut our side, then discard the client's input (bounded) before closing, so
        its kernel does not turn our unread-input close into a reset that eats the response."""
        with trio.move_on_after(self.config.drain_timeout):
            try:
                await self.stream.send_eof()
                discarded = 0
                while discarded <= self.config.drain_max_bytes:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        return
                    discarded += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
