"""The S3 append protocol as data: requests to send, answers to understand.

No I/O and no trio here, so every rule is testable with plain values:
URLs for path-style and virtual-host-style addressing, the append headers
(``x-amz-write-offset-bytes``, a body checksum), S3 XML error bodies, and the
classification of an answer into what the caller should do next.

Facts used (AWS S3 API reference): ``PutObject`` takes ``x-amz-write-offset-bytes``
and answers ``x-amz-object-size`` after an append; its errors include
``InvalidWriteOffset`` and ``TooManyParts``. S3 Express does not accept ``Content-MD5``, so CRC32 is the default checksum.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, urlsplit

from . import crc
from .errors import ConfigError

Addressing = Literal["auto", "path", "virtual"]
Checksum = Literal["crc32", "md5", "none"]

OFFSET_HEADER = "x-amz-write-offset-bytes"
OBJECT_SIZE_HEADER = "x-amz-object-size"
MAX_ERROR_BODY = 64 * 1024  # an S3 error document is tiny; never parse more than this
_DNS_BUCKET = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")  # one DNS label, no dots
_HOST_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class Endpoint:
    """Where S3 lives: scheme, host[:port] and an optional path prefix."""

    scheme: str
    netloc: str
    base_path: str = ""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse ``http(s)://host[:port][/prefix]``; anything else is a ConfigError."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"endpoint URL must look like http(s)://host[:port], got {url!r}")
        if parts.query or parts.fragment or parts.username:
            raise ConfigError(f"endpoint URL must not carry a query, fragment or user info: {url!r}")
        return cls(parts.scheme, parts.netloc, parts.path.rstrip("/"))

    @property
    def host(self) -> str:
        return urlsplit(f"{self.scheme}://{self.netloc}").hostname or ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}{self.base_path}"


def aws_endpoint(region: str) -> Endpoint:
    """The regional AWS S3 endpoint."""
    return Endpoint("https", f"s3.{region}.amazonaws.com")


def s3express_endpoint(bucket: str, region: str) -> Endpoint:
    """The zonal endpoint of a directory bucket ``name--<az-id>--x-s3``."""
    m = re.fullmatch(r".+--([a-z0-9-]+)--x-s3", bucket)
    if not m:
        raise ConfigError(f"{bucket!r} is not a directory bucket name (expected NAME--AZID--x-s3)")
    return Endpoint("https", f"s3express-{m.group(1)}.{region}.amazonaws.com")


def encode_key(key: str) -> str:
    """Percent-encode an object key for the URL path, the way S3 and SigV4
    expect it: every byte but unreserved characters and ``/`` is escaped
    (so ``+`` and space differ), ``//`` is kept. Whole-segment ``.``/``..``
    are escaped too, because URL libraries (httpx included) would otherwise
    remove them as dot segments."""
    if not key:
        raise ConfigError("object key must not be empty")
    segments = quote(key, safe="/").split("/")
    return "/".join(s.replace(".", "%2E") if s in (".", "..") else s for s in segments)


def use_virtual_host(endpoint: Endpoint, bucket: str, addressing: Addressing) -> bool:
    """Decide the addressing style. ``auto`` picks virtual hosts only on AWS
    endpoints and only for DNS-safe bucket names without dots (dots break
    TLS wildcard certificates); custom endpoints get path style."""
    if addressing == "path":
        return False
    if addressing == "virtual":
        if not _HOST_BUCKET.match(bucket) or ".." in bucket:
            raise ConfigError(f"bucket {bucket!r} cannot be a host name; use path-style addressing")
        return True
    host = endpoint.host
    try:
        ipaddress.ip_address(host)
        return False
    except ValueError:
        pass
    return host.endswith(".amazonaws.com") and bool(_DNS_BUCKET.match(bucket))


def bucket_url(endpoint: Endpoint, bucket: str, addressing: Addressing = "auto", query: str = "") -> str:
    """URL of the bucket itself (create bucket, CreateSession)."""
    q = f"?{query}" if query else ""
    if use_virtual_host(endpoint, bucket, addressing):
        return f"{endpoint.scheme}://{bucket}.{endpoint.netloc}{endpoint.base_path}/{q}"
    return f"{endpoint}/{quote(bucket, safe='')}{q}"


def object_url(endpoint: Endpoint, bucket: str, key: str, addressing: Addressing = "auto") -> str:
    """URL of one object."""
    path = encode_key(key)
    if use_virtual_host(endpoint, bucket, addressing):
        return f"{endpoint.scheme}://{bucket}.{endpoint.netloc}{endpoint.base_path}/{path}"
    return f"{endpoint}/{quote(bucket, safe='')}/{path}"


@dataclass(frozen=True)
class Request:
    """One HTTP request to send: the client turns it into an httpx.Request."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def checksum_headers(body: bytes, algorithm: Checksum, crc32: int | None = None) -> dict[str, str]:
    """The integrity header for ``body``: ``x-amz-checksum-crc32`` (base64 of
    the big-endian CRC32) or ``Content-MD5`` (base64 of the MD5 digest).
    ``crc32``: the body's CRC32 if the caller already has it (computed off the
    event loop, beside reading the body); used only for the CRC32 header."""
    if algorithm == "crc32":
        value = crc.crc32(body) if crc32 is None else crc32
        return {"x-amz-checksum-crc32": base64.b64encode(value.to_bytes(4, "big")).decode()}
    if algorithm == "md5":
        return {"Content-MD5": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()}
    return {}


def append_request(
    url: str, offset: int, body: bytes, checksum: Checksum = "crc32", *, crc32: int | None = None
) -> Request:
    """PUT that appends ``body`` at byte ``offset``, with a fixed Content-Length
    (S3 Express refuses chunked transfer encoding for appends); ``crc32``: the
    body's, if already known."""
    if offset < 0:
        raise ValueError(f"append offset must be >= 0, got {offset}")
    headers = {OFFSET_HEADER: str(offset), "Content-Length": str(len(body)), **checksum_headers(body, checksum, crc32)}
    return Request("PUT", url, headers, body)


def put_request(url: str, body: bytes, checksum: Checksum = "crc32") -> Request:
    """A plain PUT that creates or replaces the object."""
    return Request("PUT", url, {"Content-Length": str(len(body)), **checksum_headers(body, checksum)}, body)


def get_request(url: str, range_: tuple[int, int | None] | None = None) -> Request:
    """GET, optionally ``Range: bytes=start-[end]`` (end inclusive, as HTTP says)."""
    if range_ is None:
        return Request("GET", url)
    start, end = range_
    return Request("GET", url, {"Range": f"bytes={start}-{'' if end is None else end}"})


def create_bucket_request(url: str, region: str | None = None) -> Request:
    """PUT bucket; outside us-east-1 AWS wants the region in the body."""
    if not region or region == "us-east-1":
        return Request("PUT", url, {"Content-Length": "0"})
    body = (
        '<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
    ).encode()
    return Request("PUT", url, {"Content-Length": str(len(body))}, body)


@dataclass(frozen=True)
class ErrorInfo:
    """What an S3 error answer said."""

    status: int
    code: str
    message: str
    request_id: str | None = None


_STATUS_CODES = {
    301: "PermanentRedirect",
    400: "BadRequest",
    403: "Forbidden",  # a bodiless 403 (HEAD) cannot say whether keys, signature or permissions
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    412: "PreconditionFailed",
    416: "InvalidRange",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def strip_ns(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml_fields(body: bytes) -> dict[str, str]:
    """Child elements of the root as {local name: text}; {} if not XML."""
    try:
        root = ET.fromstring(body[:MAX_ERROR_BODY])
    except ET.ParseError:
        return {}
    return {strip_ns(child.tag): (child.text or "").strip() for child in root}


def parse_error(status: int, body: bytes, headers: Mapping[str, str]) -> ErrorInfo:
    """Read an error answer. HEAD answers have no body, so the code then
    comes from the status (404 → NotFound, 403 → AccessDenied, ...)."""
    fields = _xml_fields(body) if body else {}
    code = fields.get("Code") or _STATUS_CODES.get(status, f"HTTP{status}")
    message = fields.get("Message") or f"HTTP {status} without an S3 error body"
    request_id = fields.get("RequestId") or headers.get("x-amz-request-id")
    return ErrorInfo(status, code, message, request_id)


class Outcome(enum.Enum):
    """What the caller should do with an answer."""

    OK = "ok"
    OFFSET_MISMATCH = "offset_mismatch"  # reconcile: HEAD and compare lengths
    NOT_FOUND = "not_found"
    TOO_MANY_PARTS = "too_many_parts"  # roll over to a new object
    AUTH = "auth"  # fatal: fix credentials, region, clock or permissions
    THROTTLED = "throttled"  # retriable after a backoff
    SERVER = "server"  # retriable; the request may have been applied
    FATAL = "fatal"  # any other 4xx: this request will never work


AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "AuthorizationHeaderMalformed",
        "InvalidSecurity",
        "MissingSecurityHeader",
    }
)
THROTTLE_CODES = frozenset({"SlowDown", "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestLimitExceeded"})
RETRIABLE_4XX = frozenset({"RequestTimeout"})


def classify(status: int, code: str | None = None, *, appending: bool = False) -> Outcome:
    """Map a status and S3 error code to an ``Outcome``.

    ``InvalidArgument`` counts as an offset mismatch only on an append: our
    server answers a wrong offset that way (S3 Express says
    ``InvalidWriteOffset``); the writer's HEAD tells the two apart.
    """
    if 200 <= status < 300:
        return Outcome.OK
    if code == "InvalidWriteOffset" or (appending and code == "InvalidArgument"):
        return Outcome.OFFSET_MISMATCH
    if code == "TooManyParts":
        return Outcome.TOO_MANY_PARTS
    if code in THROTTLE_CODES or status == 503:
        return Outcome.THROTTLED
    if status >= 500 or code in RETRIABLE_4XX:
        return Outcome.SERVER
    if code in AUTH_CODES or status in (401, 403):
        return Outcome.AUTH
    if status == 404:
        return Outcome.NOT_FOUND
    return Outcome.FATAL


AUTH_HINTS = {
    "InvalidAccessKeyId": "the access key id is unknown: check AWS_ACCESS_KEY_ID or the profile's aws_access_key_id",
    "SignatureDoesNotMatch": "check the secret access key, the region used for signing, and the endpoint URL",
    "AccessDenied": "the credentials lack permission for this bucket/key (s3:PutObject, s3:GetObject, s3express:CreateSession)",
    "RequestTimeTooSkewed": "this machine's clock is off; sync it (NTP)",
    "ExpiredToken": "the session token expired: refresh AWS_SESSION_TOKEN or the profile",
    "InvalidToken": "the session token is malformed or for another account: refresh AWS_SESSION_TOKEN",
}


def auth_hint(code: str) -> str:
    """One sentence saying what to fix for an auth failure."""
    return AUTH_HINTS.get(code, "check the credentials, region and permissions")


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    """A non-negative integer header, or None when absent or not ASCII digits."""
    value = headers.get(name)
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    return int(value)
