"""A keep-alive raw-socket S3 client for benchmarks: HEAD, GET, appends and listings with no client overhead.

httpx costs about a millisecond of CPU per request here; on a 2-core machine
shared with the agent under test, the observer must cost next to nothing.
Requests are signed with ``sink.sigv4`` (a signed request stays valid for
15 minutes, so a poller may send the same bytes again and again) and
responses are parsed just enough: the status line, Content-Length, the body.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from urllib.parse import quote

from sink import sigv4
from tests.support import ACCESS_KEY, REGION, SECRET_KEY

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
KEY_SIZE = re.compile(rb"<Key>([^<]*)</Key>.*?<Size>(\d+)</Size>", re.S)
_TRUNCATED = re.compile(rb"<IsTruncated>true</IsTruncated>")
_NEXT_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")


def sign(method: str, port: int, path: str, query: str = "", *, headers: dict[str, str] | None = None,
         body_length: int = 0, payload: str = EMPTY_SHA256) -> bytes:
    """The head of one SigV4-signed request (no body)."""
    host = f"127.0.0.1:{port}"
    amz_date = sigv4.amz_date_of(time.time())
    all_headers = [("host", host), ("x-amz-date", amz_date), ("x-amz-content-sha256", payload),
                   ("content-length", str(body_length)), *((k.lower(), v) for k, v in (headers or {}).items())]
    authz = sigv4.authorization_header(method, path, query, all_headers, [n for n, _ in all_headers], payload,
                                       amz_date=amz_date, access_key_id=ACCESS_KEY, secret=SECRET_KEY, region=REGION)
    target = f"{path}?{query}" if query else path
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in all_headers)
    return (head + f"authorization: {authz}\r\n\r\n").encode()


def object_path(bucket: str, key: str) -> str:
    return f"/{bucket}/{quote(key, safe='/~')}"


@dataclass
class Response:
    status: int
    length: int  # Content-Length (for HEAD: the object's length)
    body: bytes


class RawS3:
    """One keep-alive connection to the server on 127.0.0.1:``port``; one request at a time."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawS3:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, head: bytes, body: bytes | memoryview = b"", *, head_only: bool = False) -> Response:
        """Send ``head`` (+ ``body``) and read the whole response (``head_only``: a HEAD, no body follows)."""
        if body:
            self.sock.sendall(head)
            self.sock.sendall(body)
        else:
            self.sock.sendall(head)
        return self.read_response(head_only=head_only)

    def read_response(self, *, head_only: bool = False) -> Response:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n\r\n")
            while end < 0:
                self._fill()
                end = buf.find(b"\r\n\r\n")
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            status = int(head[9:12])
            if status != 100:
                break
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        if head_only:
            return Response(status, length, b"")
        while len(buf) < length:
            self._fill()
        body = bytes(buf[:length])
        del buf[:length]
        return Response(status, length, body)

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        self._buf += data

    # -- operations -------------------------------------------------------------------

    def create_bucket(self, bucket: str) -> None:
        r = self.request(sign("PUT", self.port, f"/{bucket}"))
        if r.status != 200:
            raise RuntimeError(f"CreateBucket {bucket}: {r.status} {r.body[:200]!r}")

    def head_length(self, bucket: str, key: str) -> int | None:
        """The object's length, or None when there is no such object."""
        r = self.request(sign("HEAD", self.port, object_path(bucket, key)), head_only=True)
        if r.status == 404:
            return None
        if r.status != 200:
            raise RuntimeError(f"HEAD {key}: {r.status}")
        return r.length

    def get(self, bucket: str, key: str) -> bytes | None:
        r = self.request(sign("GET", self.port, object_path(bucket, key)))
        if r.status == 404:
            return None
        if r.status != 200:
            raise RuntimeError(f"GET {key}: {r.status} {r.body[:200]!r}")
        return r.body

    def append(self, bucket: str, key: str, offset: int, body: bytes | memoryview) -> None:
        """PUT ``body`` at ``offset`` (a create when 0), unsigned payload as the agent's large appends."""
        headers = {"x-amz-write-offset-bytes": str(offset)} if offset else None
        head = sign("PUT", self.port, object_path(bucket, key), headers=headers, body_length=len(body),
                    payload="UNSIGNED-PAYLOAD")
        r = self.request(head, body)
        if r.status != 200:
            raise RuntimeError(f"append {key}@{offset}: {r.status} {r.body[:200]!r}")

    def list_sizes(self, bucket: str, prefix: str) -> dict[str, int]:
        """Every key under ``prefix`` with its size (ListObjectsV2, all pages)."""
        sizes: dict[str, int] = {}
        token = ""
        while True:
            query = f"list-type=2&max-keys=1000&prefix={quote(prefix, safe='')}"
            if token:
                query += f"&continuation-token={quote(token, safe='')}"
            r = self.request(sign("GET", self.port, f"/{bucket}", query))
            if r.status != 200:
                raise RuntimeError(f"ListObjectsV2 {prefix}: {r.status} {r.body[:200]!r}")
            for key, size in KEY_SIZE.findall(r.body):
                sizes[key.decode()] = int(size)
            more = _NEXT_TOKEN.search(r.body)
            if not _TRUNCATED.search(r.body) or more is None:
                return sizes
            token = more.group(1).decode()
