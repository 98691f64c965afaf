"""A lean HTTP/1.1 transport for ``http://`` endpoints: one write per request, keep-alive, no TLS.

httpx's default transport (httpcore + h11) costs about a millisecond of CPU
per request here, mostly in layers a small S3 request does not need, and it
writes the head and the body of a request in two ``send`` calls.  An agent
appending to a thousand objects makes hundreds of such requests a second, so
for plain-HTTP endpoints (a sidecar, a server on the same host or network)
``PlainHTTPTransport`` does the same job directly on trio sockets: the head
and a small body go out in one write, the answer is parsed by hand
(``Content-Length``, ``chunked``, or until close), and connections are kept
alive in a pool.  It is an ``httpx.AsyncBaseTransport``, so everything above
it (auth, health, errors) is unchanged; https endpoints keep httpx's own.

Failures are httpx's exceptions (``ConnectError``, ``ReadError``,
``ReadTimeout``, ``RemoteProtocolError``...), as the client above expects.
"""

from __future__ import annotations

import math
from collections import deque

import httpx
import trio

MAX_HEAD = 64 * 1024  # bytes of status line and headers we accept
JOIN_BODY_BELOW = 256 * 1024  # smaller bodies are sent in the same write as the head
READ_SIZE = 64 * 1024
RECHECK_IDLE = 1.0  # seconds idle after which a pooled connection is checked for a close by the server


class _Connection:
    """One keep-alive connection and the bytes read past the previous answer."""

    __slots__ = ("stream", "buffer", "idle_since")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.idle_since = 0.0

    async def receive(self, deadline: float) -> bool:
        """Read more into the buffer; False at end of stream."""
        with trio.CancelScope(deadline=deadline) as scope:  # not move_on_at: no generator per read
            data = await self.stream.receive_some(READ_SIZE)
        if scope.cancelled_caught:
            raise httpx.ReadTimeout("no answer within the read timeout")
        if not data:
            return False
        self.buffer += data
        return True

    def take(self, n: int) -> bytes:
        out = bytes(self.buffer[:n])
        del self.buffer[:n]
        return out


def _timeouts(request: httpx.Request) -> tuple[float, float, float]:
    """(connect, read, write) seconds from the request's timeout extension (None: no limit)."""
    t = request.extensions.get("timeout", {})
    return tuple(math.inf if t.get(k) is None else t[k] for k in ("connect", "read", "write"))  # type: ignore[return-value]


def _head_bytes(request: httpx.Request) -> bytes:
    target = request.url.raw_path
    lines = [request.method.encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _parse_head(head: bytes) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    status_line, *header_lines = head.split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    headers = []
    for line in header_lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError(f"malformed header line: {line[:80]!r}")
        headers.append((name, value.strip()))
    return int(code), version, headers


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
        connect, read, write = _timeouts(request)
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        async with self._slots:
            address = (request.url.host, request.url.port or 80)
            connection = await self._connection(address, connect)
            try:
                status, headers, content, reusable = await self._exchange(connection, request, body, read, write)
            except BaseException:
                await trio.aclose_forcefully(connection.stream)
                raise
            if reusable and not self._closed:
                connection.idle_since = trio.current_time()
                self._idle.setdefault(address, deque()).append(connection)
            else:
                await trio.aclose_forcefully(connection.stream)
        return httpx.Response(status, headers=headers, content=content, request=request,
                              extensions={"http_version": b"HTTP/1.1"})

    async def _connection(self, address: tuple[str, int], timeout: float) -> _Connection:
        idle = self._idle.get(address)
        while idle:
            connection = idle.pop()  # the most recently used: least likely to have been closed
            if connection.buffer:
                await trio.aclose_forcefully(connection.stream)  # bytes nobody asked for: not reusable
                continue
            if trio.current_time() - connection.idle_since >= self._recheck_idle and connection.stream.socket.is_readable():
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

    async def _exchange(self, connection: _Connection, request: httpx.Request, body: bytes, read: float,
                        write: float) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        head = _head_bytes(request)
        try:
            with trio.CancelScope(deadline=trio.current_time() + write) as scope:
                if len(body) < JOIN_BODY_BELOW:
                    await connection.stream.send_all(head + body)
                else:
                    await connection.stream.send_all(head)
                    await connection.stream.send_all(body)
        except (trio.BrokenResourceError, OSError) as exc:
            raise httpx.WriteError(f"the connection broke while sending: {exc}") from exc
        if scope.cancelled_caught:
            raise httpx.WriteTimeout("the request was not written within the write timeout")
        try:
            return await self._read_response(connection, request.method, trio.current_time() + read)
        except (trio.BrokenResourceError, OSError) as exc:
            raise httpx.ReadError(f"the connection broke while reading the answer: {exc}") from exc

    async def _read_response(self, connection: _Connection, method: str,
                             deadline: float) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        buffer = connection.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > MAX_HEAD:
                raise httpx.RemoteProtocolError("the answer's head is too large")
            if not await connection.receive(deadline):
                raise httpx.RemoteProtocolError("the server closed the connection without an answer")
        status, version, headers = _parse_head(connection.take(end + 4)[: end])
        if 100 <= status < 200:
            return await self._read_response(connection, method, deadline)  # an interim answer: the real one follows
        fields = {name.lower(): value for name, value in headers}
        reusable = version == b"HTTP/1.1" and fields.get(b"connection", b"").lower() != b"close"
        if method == "HEAD" or status in (204, 304):
            return status, headers, b"", reusable
        if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
            return status, headers, await self._read_chunked(connection, deadline), reusable
        if (length := fields.get(b"content-length")) is not None:
            if not length.isdigit():
                raise httpx.RemoteProtocolError(f"bad Content-Length: {length[:40]!r}")
            return status, headers, await self._read_exactly(connection, int(length), deadline), reusable
        while await connection.receive(deadline):  # no length: the body ends with the connection
            pass
        return status, headers, connection.take(len(connection.buffer)), False

    async def _read_exactly(self, connection: _Connection, n: int, deadline: float) -> bytes:
        while len(connection.buffer) < n:
            if not await connection.receive(deadline):
                raise httpx.RemoteProtocolError(f"the connection closed {n - len(connection.buffer)} bytes before the body's end")
        return connection.take(n)

    async def _read_chunked(self, connection: _Connection, deadline: float) -> bytes:
        parts = []
        while True:
            while (end := connection.buffer.find(b"\r\n")) < 0:
                if len(connection.buffer) > MAX_HEAD or not await connection.receive(deadline):
                    raise httpx.RemoteProtocolError("bad chunked body")
            size_field = connection.take(end + 2)[:end].split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"bad chunk size: {size_field[:40]!r}") from None
            if size == 0:
                while (end := connection.buffer.find(b"\r\n")) != 0:  # trailers, then the empty line
                    if end > 0:
                        connection.take(end + 2)
                    elif len(connection.buffer) > MAX_HEAD or not await connection.receive(deadline):
                        raise httpx.RemoteProtocolError("bad chunked body trailer")
                connection.take(2)
                return b"".join(parts)
            chunk = await self._read_exactly(connection, size + 2, deadline)
            if chunk[-2:] != b"\r\n":
                raise httpx.RemoteProtocolError("a chunk does not end with CRLF")
            parts.append(chunk[:-2])

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await trio.aclose_forcefully(connection.stream)
