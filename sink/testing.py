"""An in-memory S3 that speaks the append contract, with faults on demand.

``FakeS3`` is an ``httpx.AsyncBaseTransport``: hand it to
``httpx.AsyncClient(transport=...)`` and the real ``S3Client`` and
``ObjectWriter`` run against it unchanged. It follows /work/shared/APPEND.md
(offsets parsed strictly, mismatches answered 400 ``InvalidArgument`` or,
S3 Express style, ``InvalidWriteOffset``, ``x-amz-object-size`` on success,
XML error bodies) and can misbehave in the ways the sink must survive:

* ``DROP_RESPONSE``  the write is applied, then the answer is lost (the ambiguous case)
* ``RESET_BEFORE``   the connection resets before anything is applied
* ``SLOW_DOWN``      503 SlowDown, nothing applied
* ``INTERNAL_ERROR`` 500 InternalError, nothing applied
* ``FOREIGN_APPEND`` another writer appends ``foreign_bytes`` just before this request

plus ``TooManyParts`` after ``max_appends`` writes to one object,
S3 Express ``CreateSession`` with sessions that expire on trio's clock, and
tailbucket's ``AppendObjects`` (``append_objects=False``: refused, as by any
other server), whose items meet the faults queued for their keys' appends.
It is not a mock of the sink: it stores bytes and enforces the rules.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import re
import zlib
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from enum import Enum
from urllib.parse import unquote
from xml.sax.saxutils import escape

import httpx
import trio

from .append_batch import BatchFormatError, ItemResult, decode_request, encode_results

MAX_OFFSET = 2**63 - 1
MAX_KEY_BYTES = 1024  # S3's limit on a key (UTF-8)
Op = str  # "head" | "get" | "append" | "put" | "delete" | "create_bucket" | "create_session" | "append_objects"


class Fault(Enum):
    DROP_RESPONSE = "drop_response"
    RESET_BEFORE = "reset_before"
    SLOW_DOWN = "slow_down"
    INTERNAL_ERROR = "internal_error"
    FOREIGN_APPEND = "foreign_append"


@dataclass
class StoredObject:
    data: bytearray = field(default_factory=bytearray)
    writes: int = 0
    etag: str = '"d41d8cd98f00b204e9800998ecf8427e"'

    def touch(self) -> None:
        self.writes += 1
        self.etag = f'"{hashlib.md5(self.data, usedforsecurity=False).hexdigest()}-{self.writes}"'


@dataclass(frozen=True)
class SeenRequest:
    """One request as the fake received it (header names lower-case)."""

    op: Op
    method: str
    bucket: str
    key: str
    headers: dict[str, str]
    body: bytes
    host: str


class FakeS3(httpx.AsyncBaseTransport):
    """In-memory S3 append server; see the module docstring."""

    def __init__(
        self,
        *,
        offset_error: str = "InvalidArgument",
        max_appends: int | None = None,
        foreign_bytes: bytes = b"<foreign writer>",
        session_lifetime: float = 300.0,
        require_session: bool = False,
        wall_clock: Callable[[], datetime] | None = None,
        append_objects: bool = True,
    ) -> None:
        self.offset_error = offset_error
        self.append_objects = append_objects  # tailbucket's AppendObjects (else refused, as S3 Express would)
        self.max_appends = max_appends
        self.foreign_bytes = foreign_bytes
        self.session_lifetime = session_lifetime
        self.require_session = require_session
        self.wall_clock = wall_clock or (lambda: datetime.now(timezone.utc))
        self.buckets: dict[str, dict[str, StoredObject]] = {}
        self.requests: list[SeenRequest] = []
        self.fault_source: Callable[[SeenRequest], Fault | None] | None = None
        self.sessions: dict[str, tuple[str, float]] = {}  # token -> (bucket, trio deadline)
        self._queued: list[tuple[Fault, Op, str | None]] = []
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        objects = sum(len(b) for b in self.buckets.values())
        return f"<FakeS3 buckets={len(self.buckets)} objects={objects} requests={len(self.requests)} queued_faults={len(self._queued)}>"

    # -- direct access for tests ------------------------------------------------

    def create_bucket(self, bucket: str) -> None:
        self.buckets.setdefault(bucket, {})

    def object_bytes(self, bucket: str, key: str) -> bytes | None:
        obj = self.buckets.get(bucket, {}).get(key)
        return None if obj is None else bytes(obj.data)

    def foreign_append(self, bucket: str, key: str, data: bytes) -> None:
        """Another writer appends ``data`` (creating the object if needed)."""
        obj = self.buckets.setdefault(bucket, {}).setdefault(key, StoredObject())
        obj.data += data
        obj.touch()

    def inject(self, *faults: Fault, op: Op = "append", key: str | None = None) -> None:
        """Queue faults for the next requests of kind ``op`` (and ``key``)."""
        self._queued.extend((f, op, key) for f in faults)

    def count(self, op: Op) -> int:
        return sum(1 for r in self.requests if r.op == op)

    # -- the transport ----------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        bucket, key, host = self._locate(request.url)
        op = _op(request.method, key, request.url.query, "x-amz-write-offset-bytes" in request.headers)
        seen = SeenRequest(op, request.method, bucket, key, dict(request.headers), body, host)
        self.requests.append(seen)
        if op == "append_objects" and self.append_objects:
            return self._append_objects(request, seen)
        fault = self._take_fault(seen)
        if fault is Fault.RESET_BEFORE:
            raise httpx.ReadError("connection reset by peer (injected)", request=request)
        if fault is Fault.SLOW_DOWN:
            return _error(503, "SlowDown", "Please reduce your request rate.")
        if fault is Fault.INTERNAL_ERROR:
            return _error(500, "InternalError", "We encountered an internal error. Please try again.")
        if fault is Fault.FOREIGN_APPEND and key:
            self.foreign_append(bucket, key, self.foreign_bytes)
        response = self._handle(seen, request.url.query)
        if fault is Fault.DROP_RESPONSE:
            raise httpx.ReadTimeout("answer lost after the write was applied (injected)", request=request)
        return response

    def _take_fault(self, seen: SeenRequest) -> Fault | None:
        for i, (fault, op, key) in enumerate(self._queued):
            if op == seen.op and key in (None, seen.key):
                del self._queued[i]
                return fault
        return self.fault_source(seen) if self.fault_source else None

    def _locate(self, url: httpx.URL) -> tuple[str, str, str]:
        """(bucket, key, host) from a path-style or virtual-host-style URL."""
        host = url.host
        path = unquote(url.raw_path.split(b"?", 1)[0].decode("ascii"))
        label = host.split(".", 1)[0]
        if "." in host and not _is_ip(host) and label in self.buckets:
            return label, path[1:], host
        bucket, _, key = path[1:].partition("/")
        return bucket, key, host

    def _handle(self, seen: SeenRequest, query: bytes) -> httpx.Response:
        if seen.headers.get("transfer-encoding"):
            return _error(411, "MissingContentLength", "You must provide the Content-Length HTTP header.")
        if seen.op == "append_objects":  # not offered (``append_objects=False``)
            return _error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        if seen.op == "create_bucket":
            if seen.bucket in self.buckets:
                return _error(409, "BucketAlreadyOwnedByYou", "You already own it.")
            self.buckets[seen.bucket] = {}
            return httpx.Response(200)
        objects = self.buckets.get(seen.bucket)
        if objects is None:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist", head=seen.op == "head")
        if seen.op == "create_session":
            return self._create_session(seen.bucket)
        if self.require_session and (refusal := self._check_session(seen)) is not None:
            return refusal
        if (refusal := _check_key(seen.key, head=seen.op == "head")) is not None:
            return refusal
        obj = objects.get(seen.key)
        if seen.op == "head":
            if obj is None:
                return httpx.Response(404)
            return httpx.Response(200, headers={"Content-Length": str(len(obj.data)), "ETag": obj.etag})
        if seen.op == "get":
            return self._get(obj, seen.headers.get("range"))
        if seen.op == "delete":
            objects.pop(seen.key, None)
            return httpx.Response(204)
        if (refusal := _check_digest(seen)) is not None:
            return refusal
        if seen.op == "put":
            objects[seen.key] = StoredObject(bytearray(seen.body))
            objects[seen.key].touch()
            return httpx.Response(200, headers={"ETag": objects[seen.key].etag})
        return self._append(objects, seen, obj)

    def _append(self, objects: dict[str, StoredObject], seen: SeenRequest, obj: StoredObject | None) -> httpx.Response:
        raw = seen.headers["x-amz-write-offset-bytes"]
        if not re.fullmatch(r"[0-9]+", raw) or int(raw) > MAX_OFFSET:
            return _error(400, "InvalidArgument", f"Invalid x-amz-write-offset-bytes: {raw!r}")
        offset = int(raw)
        size = 0 if obj is None else len(obj.data)
        if obj is None and offset > 0:
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        if offset != size:
            return _error(400, self.offset_error, f"write offset {offset} does not match the object size {size}")
        if obj is not None and self.max_appends is not None and obj.writes >= self.max_appends:
            return _error(400, "TooManyParts", "The object has reached the maximum number of appends.")
        if obj is None:
            obj = objects[seen.key] = StoredObject()
        if seen.body or obj.writes == 0:
            obj.data += seen.body
            obj.touch()
        return httpx.Response(200, headers={"ETag": obj.etag, "x-amz-object-size": str(len(obj.data))})

    def _append_objects(self, request: httpx.Request, seen: SeenRequest) -> httpx.Response:
        """AppendObjects: each item is an append of its own, and sees the faults queued for that
        key's appends (a reset or a lost answer is the whole request's; a 5xx is the item's)."""
        objects = self.buckets.get(seen.bucket)
        if objects is None:
            return _error(404, "NoSuchBucket", "The specified bucket does not exist")
        try:
            items = decode_request(seen.body)
        except BatchFormatError as exc:
            return _error(400, "InvalidRequest", str(exc))
        appends = []
        for item in items:
            headers = {"x-amz-write-offset-bytes": str(item.offset), "content-length": str(len(item.body))}
            if item.crc32:
                headers["x-amz-checksum-crc32"] = item.crc32
            appends.append(SeenRequest("append", "PUT", seen.bucket, item.key, headers, bytes(item.body), seen.host))
        faults = [self._take_fault(each) for each in appends]
        if Fault.RESET_BEFORE in faults:
            raise httpx.ReadError("connection reset by peer (injected)", request=request)
        results = []
        for each, fault in zip(appends, faults):
            if fault is Fault.SLOW_DOWN or fault is Fault.INTERNAL_ERROR:
                status, code = (503, "SlowDown") if fault is Fault.SLOW_DOWN else (500, "InternalError")
                results.append(ItemResult(status, code=code, message="injected"))
                continue
            if fault is Fault.FOREIGN_APPEND:
                self.foreign_append(seen.bucket, each.key, self.foreign_bytes)
            answer = _check_key(each.key) or _check_digest(each) or self._append(objects, each, objects.get(each.key))
            if answer.status_code == 200:
                results.append(ItemResult(200, size=int(answer.headers["x-amz-object-size"]),
                                          etag=answer.headers["etag"]))
            else:
                code = re.search(r"<Code>(.*?)</Code>", answer.text)
                results.append(ItemResult(answer.status_code, code=code.group(1) if code else None, message="refused"))
        if Fault.DROP_RESPONSE in faults:
            raise httpx.ReadTimeout("answer lost after the writes were applied (injected)", request=request)
        return httpx.Response(200, headers={"Content-Type": "application/json"}, content=encode_results(results))

    def _get(self, obj: StoredObject | None, range_header: str | None) -> httpx.Response:
        if obj is None:
            return _error(404, "NoSuchKey", "The specified key does not exist.")
        data = bytes(obj.data)
        if range_header is None:
            return httpx.Response(200, headers={"ETag": obj.etag}, content=data)
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)
        if not m or int(m.group(1)) >= len(data):
            return _error(416, "InvalidRange", "The requested range is not satisfiable")
        start = int(m.group(1))
        end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
        headers = {"ETag": obj.etag, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        return httpx.Response(206, headers=headers, content=data[start : end + 1])

    def _create_session(self, bucket: str) -> httpx.Response:
        n = next(self._ids)
        token = f"session-token-{n}"
        self.sessions[token] = (bucket, trio.current_time() + self.session_lifetime)
        now = self.wall_clock()
        expires = (now + timedelta(seconds=self.session_lifetime)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<CreateSessionResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Credentials>'
            f"<SessionToken>{token}</SessionToken><SecretAccessKey>session-secret-{n}</SecretAccessKey>"
            f"<AccessKeyId>SESSIONKEY{n}</AccessKeyId><Expiration>{expires}</Expiration>"
            "</Credentials></CreateSessionResult>"
        )
        return httpx.Response(200, headers={"Date": format_datetime(now, usegmt=True)}, content=body.encode())

    def _check_session(self, seen: SeenRequest) -> httpx.Response | None:
        token = seen.headers.get("x-amz-s3session-token")
        known = self.sessions.get(token or "")
        if known is None or known[0] != seen.bucket:
            return _error(403, "AccessDenied", "No valid x-amz-s3session-token for this bucket.", head=seen.op == "head")
        if trio.current_time() >= known[1]:
            return _error(400, "ExpiredToken", "The provided token has expired.", head=seen.op == "head")
        return None


def _op(method: str, key: str, query: bytes, has_offset: bool) -> Op:
    if not key:
        if method == "GET" and query == b"session":
            return "create_session"
        if method == "POST" and query == b"appends":
            return "append_objects"
        return "create_bucket" if method == "PUT" else method.lower()
    if method == "PUT":
        return "append" if has_offset else "put"
    return method.lower()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _check_key(key: str, *, head: bool = False) -> httpx.Response | None:
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        return _error(400, "KeyTooLongError", f"Your key is too long: {size} bytes (at most {MAX_KEY_BYTES}).", head=head)
    return None


def _check_digest(seen: SeenRequest) -> httpx.Response | None:
    md5 = seen.headers.get("content-md5")
    if md5 is not None and md5 != b64encode(hashlib.md5(seen.body, usedforsecurity=False).digest()).decode():
        return _error(400, "BadDigest", "The Content-MD5 you specified did not match what we received.")
    crc = seen.headers.get("x-amz-checksum-crc32")
    if crc is not None and crc != b64encode(zlib.crc32(seen.body).to_bytes(4, "big")).decode():
        return _error(400, "BadDigest", "The CRC32 you specified did not match what we received.")
    return None


def _error(status: int, code: str, message: str, *, head: bool = False) -> httpx.Response:
    """An S3 error answer; HEAD answers carry no body, as on S3."""
    if head:
        return httpx.Response(status)
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{escape(message)}</Message><RequestId>fake-{code}</RequestId></Error>"
    )
    return httpx.Response(status, headers={"Content-Type": "application/xml"}, content=body.encode())
