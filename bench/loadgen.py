"""A load generator that is not the bottleneck: pre-built (pre-signed) requests over raw keep-alive sockets.

httpx costs 0.5-1.5 ms of CPU per request here, more than the server; this
sends prepared bytes with one ``send`` and parses just the status line and
Content-Length of each response, driving many connections from one thread
with ``selectors``.
"""

from __future__ import annotations

import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from sink import sigv4


@dataclass
class Result:
    requests: int
    seconds: float
    statuses: dict[int, int]
    bytes_sent: int
    bytes_received: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def signed_request(method: str, host: str, path: str, *, headers: dict[str, str] | None = None, body: bytes = b"",
                   body_length: int | None = None, access_key: str, secret: str, region: str = "us-east-1",
                   payload: str | None = None, now: float | None = None) -> bytes:
    """The bytes of one SigV4-signed HTTP/1.1 request head (plus ``body`` when given)."""
    amz_date = sigv4.amz_date_of(time.time() if now is None else now)
    payload = payload or __import__("hashlib").sha256(body).hexdigest()
    length = len(body) if body_length is None else body_length
    all_headers = [("host", host), ("x-amz-date", amz_date), ("x-amz-content-sha256", payload),
                   ("content-length", str(length)), *((k.lower(), v) for k, v in (headers or {}).items())]
    authz = sigv4.authorization_header(method, path, "", all_headers, [n for n, _ in all_headers], payload,
                                       amz_date=amz_date, access_key_id=access_key, secret=secret, region=region)
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in all_headers)
    return (head + f"authorization: {authz}\r\n\r\n").encode() + body


class _Conn:
    def __init__(self, port: int, queue: deque[bytes]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.queue = queue
        self.buf = bytearray()
        self.pending = b""


def run(port: int, requests_per_conn: Iterable[Iterable[bytes]]) -> Result:
    """Send each connection's requests one after another (keep-alive); connections run concurrently.

    For small responses only (each is buffered); large transfers use ``put_stream`` / ``get_stream``.
    """
    sel = selectors.DefaultSelector()
    conns = [_Conn(port, deque(reqs)) for reqs in requests_per_conn]
    statuses: dict[int, int] = {}
    sent = received = done = 0
    started = time.perf_counter()
    for conn in conns:
        if conn.queue:
            conn.pending = memoryview(conn.queue.popleft())
            sel.register(conn.sock, selectors.EVENT_WRITE, conn)
    while sel.get_map():
        for key, mask in sel.select():
            conn: _Conn = key.data
            if mask & selectors.EVENT_WRITE:
                n = conn.sock.send(conn.pending)
                sent += n
                conn.pending = conn.pending[n:]
                if not conn.pending:
                    sel.modify(conn.sock, selectors.EVENT_READ, conn)
                continue
            data = conn.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            received += len(data)
            conn.buf += data
            while True:
                end = conn.buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = bytes(conn.buf[:end]).lower()
                status = int(head[9:12])
                if status == 100:
                    del conn.buf[: end + 4]
                    continue
                cl = head.find(b"\ncontent-length:")
                length = int(head[cl + 16: head.find(b"\r", cl + 1) if head.find(b"\r", cl + 1) > 0 else None]) if cl >= 0 else 0
                if len(conn.buf) < end + 4 + length:
                    break
                del conn.buf[: end + 4 + length]
                statuses[status] = statuses.get(status, 0) + 1
                done += 1
                if conn.queue:
                    conn.pending = memoryview(conn.queue.popleft())
                    sel.modify(conn.sock, selectors.EVENT_WRITE, conn)
                else:
                    sel.unregister(conn.sock)
                    conn.sock.close()
                break
    return Result(done, time.perf_counter() - started, statuses, sent, received)


def _read_head(sock: socket.socket) -> tuple[int, int, bytes]:
    """(status, content-length, bytes already read past the head) of one response, skipping 100 Continue."""
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            buf += data
        head, _, buf = buf.partition(b"\r\n\r\n")
        status = int(head[9:12])
        if status != 100:
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            return status, length, buf


def put_stream(port: int, head: bytes, chunk: memoryview, repeats: int) -> int:
    """Send one request head then ``chunk`` ``repeats`` times as its body; return the status (body drained)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        for _ in range(repeats):
            sock.sendall(chunk)
        status, length, rest = _read_head(sock)
        while len(rest) < length:
            rest += sock.recv(65536)
        return status


def get_stream(port: int, head: bytes) -> tuple[int, int]:
    """Send one GET and read the body into a reused buffer; return (status, body bytes)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        status, length, rest = _read_head(sock)
        got = len(rest)
        buf = bytearray(1 << 20)
        while got < length:
            n = sock.recv_into(buf)
            if not n:
                raise ConnectionError("short body")
            got += n
        return status, got
