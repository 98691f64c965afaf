"""AWS Signature Version 4, the one implementation both sides share.

The sink signs with it and the server (``server/auth.py``) verifies with it, so
the two can never disagree about a canonical request (``sink.presign`` builds
presigned URLs on it).  Everything here is pure
(no I/O, no trio); ``httpx`` is imported only for the ``httpx.Auth`` base class.

Facts from the AWS docs, cited where used:
  https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
  https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
  https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html
  https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming-trailers.html
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple
from datetime import datetime
from urllib.parse import quote, unquote_to_bytes

import httpx

ALGORITHM = "AWS4-HMAC-SHA256"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"

# Hop-by-hop and tracing headers that proxies add, drop or rewrite; signing
# them would break requests in transit.  Same set botocore leaves unsigned
# (botocore.auth.SIGNED_HEADERS_BLACKLIST), plus Authorization itself.
UNSIGNED_HEADERS = frozenset(
    {
        "authorization", "baggage", "connection", "expect", "keep-alive", "proxy-authenticate",
        "proxy-authorization", "te", "traceparent", "tracestate", "trailer", "transfer-encoding",
        "upgrade", "user-agent", "x-amzn-trace-id",
    }
)

_SPACES = re.compile(r"[ \t\r\n]+")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9\-._~/]*")  # only bytes that S3's encoding leaves as they are
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DATE_STAMP = re.compile(r"\d{8}")


def _bytes(text: str | bytes) -> bytes:
    # Wire text is decoded with surrogateescape, so any byte round-trips.
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def uri_encode(text: str | bytes, *, encode_slash: bool) -> str:
    """Percent-encode every byte except A-Za-z0-9 ``-._~`` (and ``/`` if kept)."""
    # urllib's quote always keeps exactly the RFC 3986 unreserved set.
    return quote(_bytes(text), safe="" if encode_slash else "/")


def _normalize_path(path: bytes) -> bytes:
    """Remove dot segments and empty segments (generic SigV4 only; S3 never does)."""
    out: list[bytes] = []
    for segment in path.split(b"/"):
        if segment in (b"", b"."):
            continue
        if segment == b"..":
            if out:
                out.pop()
            continue
        out.append(segment)
    normalized = b"/" + b"/".join(out)
    if path.endswith(b"/") and normalized != b"/":
        normalized += b"/"
    return normalized


def canonical_uri(raw_path: str | bytes, *, s3: bool = True) -> str:
    """The CanonicalURI of a raw wire path (without the query).

    S3: decode the wire form, then encode each byte once; never normalise (an
    object may be called ``a//b/../c``).  Generic SigV4 (``s3=False``, for the
    AWS test suite): normalise dot segments and slashes, then encode the wire
    form again, which double-encodes any ``%XX`` in it.
    """
    if s3 and isinstance(raw_path, str) and _PLAIN_PATH.fullmatch(raw_path):
        return raw_path or "/"  # nothing to decode or encode: the usual S3 path
    path = _bytes(raw_path) or b"/"
    if s3:
        return uri_encode(unquote_to_bytes(path), encode_slash=False)
    return uri_encode(_normalize_path(path), encode_slash=False)


def parse_query(raw_query: str | bytes) -> list[tuple[bytes, bytes]]:
    """Split a raw query into decoded (name, value) byte pairs; ``+`` stays ``+``."""
    pairs = []
    for item in _bytes(raw_query).split(b"&"):
        if not item:
            continue
        name, _, value = item.partition(b"=")
        pairs.append((unquote_to_bytes(name), unquote_to_bytes(value)))
    return pairs


def canonical_query(raw_query: str | bytes, *, exclude: Iterable[str] = ()) -> str:
    """The CanonicalQueryString: each name and value encoded, sorted by name then value.

    A name without ``=`` gets an empty value (``?lifecycle`` → ``lifecycle=``).
    ``exclude`` drops parameters by decoded name (query auth drops X-Amz-Signature).
    """
    if not raw_query:
        return ""
    skip = {_bytes(name) for name in exclude}
    encoded = sorted(
        (uri_encode(name, encode_slash=True), uri_encode(value, encode_slash=True))
        for name, value in parse_query(raw_query)
        if name not in skip
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def _trim(value: str) -> str:
    if "  " in value or "\t" in value or "\n" in value or "\r" in value:
        return _SPACES.sub(" ", value).strip(" ")
    return value.strip(" ")  # the usual value: nothing inside to collapse, and no regex to run


def canonical_headers(headers: Iterable[tuple[str, str]] | Mapping[str, str], signed_names: Iterable[str]) -> str:
    """``name:value\\n`` per signed header, sorted by name.

    Values are trimmed and inner runs of spaces collapsed (even inside quotes);
    repeated headers are joined with ``,`` in the order received.  A signed
    header missing from the request canonicalises with an empty value.
    ``headers``: (name, value) pairs as received, or a dict of lower-case name →
    value when no name repeats (the verifier has one: a lookup per signed name
    instead of a pass over every header).
    """
    wanted = _signed_set(tuple(signed_names))
    if isinstance(headers, dict):
        lines = []
        for name in wanted:
            value = headers.get(name, "")
            if "  " in value or "\t" in value or "\n" in value or "\r" in value:  # _trim, inline
                value = _SPACES.sub(" ", value)
            lines.append(f"{name}:{value.strip(' ')}\n")
        return "".join(lines)
    values: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in wanted:
            value = _trim(value)
            values[lname] = value if lname not in values else f"{values[lname]},{value}"
    return "".join([f"{name}:{values.get(name, '')}\n" for name in wanted])


@functools.lru_cache(maxsize=256)
def _signed_set(signed_names: tuple[str, ...]) -> dict[str, None]:
    """The signed names, lower-cased, sorted and deduplicated (an ordered set): a
    client signs the same list on every request."""
    return dict.fromkeys(sorted({name.lower() for name in signed_names}))


def signed_headers_line(signed_names: Iterable[str]) -> str:
    return _signed_line(tuple(signed_names))


@functools.lru_cache(maxsize=256)
def _signed_line(signed_names: tuple[str, ...]) -> str:
    return ";".join(_signed_set(signed_names))


def canonical_request(
    method: str,
    raw_path: str | bytes,
    raw_query: str | bytes,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    signed_names: Iterable[str],
    payload_hash: str,
    *,
    s3: bool = True,
    exclude_query: Iterable[str] = (),
) -> str:
    names = tuple(signed_names)
    return "\n".join(
        (
            method.upper(),
            canonical_uri(raw_path, s3=s3),
            canonical_query(raw_query, exclude=exclude_query),
            canonical_headers(headers, names),
            signed_headers_line(names),
            payload_hash,
        )
    )


def credential_scope(date_stamp: str, region: str, service: str) -> str:
    return f"{date_stamp}/{region}/{service}/aws4_request"


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(_bytes(text)).hexdigest()


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{_sha256_hex(canonical_request)}"


def chunk_string_to_sign(amz_date: str, scope: str, previous_signature: str, chunk_sha256_hex: str) -> str:
    """What each aws-chunked chunk signs, chained from the previous signature (sigv4-streaming.html)."""
    return f"{ALGORITHM}-PAYLOAD\n{amz_date}\n{scope}\n{previous_signature}\n{EMPTY_SHA256}\n{chunk_sha256_hex}"


def canonical_trailer(trailer_lines: Iterable[tuple[str, str]]) -> str:
    """``name:value\\n`` per trailing header, names lower-cased and sorted, values trimmed."""
    return "".join(f"{name}:{value}\n" for name, value in sorted((n.lower(), _trim(v)) for n, v in trailer_lines))


def trailer_string_to_sign(
    amz_date: str, scope: str, previous_signature: str, trailer_lines: Iterable[tuple[str, str]]
) -> str:
    """What the trailing headers sign, chained from the final chunk (sigv4-streaming-trailers.html)."""
    digest = _sha256_hex(canonical_trailer(trailer_lines))
    return f"{ALGORITHM}-TRAILER\n{amz_date}\n{scope}\n{previous_signature}\n{digest}"


@functools.lru_cache(maxsize=128)
def signing_key(secret: str, date_stamp: str, region: str, service: str) -> bytes:
    """The derived key; cached because it changes once a day per (key, region)."""
    key = ("AWS4" + secret).encode("utf-8")
    for part in (date_stamp, region, service, "aws4_request"):
        key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
    return key


def signature(key: bytes, string_to_sign: str) -> str:
    inner, outer = _hmac_pads(key)
    inner = inner.copy()
    inner.update(_bytes(string_to_sign))
    outer = outer.copy()
    outer.update(inner.digest())
    return outer.hexdigest()


@functools.lru_cache(maxsize=128)
def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) with the key's two padded blocks hashed once: a signing
    key lives a day, and copying a started hash is cheaper than starting one."""
    block = key.ljust(64, b"\0") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\0")
    return hashlib.sha256(bytes(b ^ 0x36 for b in block)), hashlib.sha256(bytes(b ^ 0x5C for b in block))


class Authorization(NamedTuple):
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header.  A named tuple:
    immutable, and made in a third of a frozen dataclass's time (one per verified request)."""

    access_key_id: str
    date_stamp: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return credential_scope(self.date_stamp, self.region, self.service)

    def header_value(self) -> str:
        """Formatted as the SDKs send it (``, `` between components)."""
        return format_authorization(self.access_key_id, self.scope, self.signed_headers, self.signature)


def format_authorization(access_key_id: str, scope: str, signed_names: Iterable[str], sig: str) -> str:
    return f"{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={signed_headers_line(signed_names)}, Signature={sig}"


def parse_credential(credential: str) -> tuple[str, str, str, str]:
    """``AKID/YYYYMMDD/region/service/aws4_request`` → (akid, date, region, service)."""
    parts = credential.rsplit("/", 4)
    if len(parts) != 5 or not all(parts):
        raise ValueError(f"the Credential is mal-formed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\": {credential!r}")
    access_key_id, date_stamp, region, service, terminator = parts
    if terminator != "aws4_request":
        raise ValueError(f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator}'")
    if not _DATE_STAMP.fullmatch(date_stamp):
        raise ValueError(f"the Credential date is not YYYYMMDD: {date_stamp!r}")
    return access_key_id, date_stamp, region, service


def parse_signed_headers(value: str) -> tuple[str, ...]:
    names = tuple(value.split(";"))
    plain = value == value.lower() and value.isprintable() and " " not in value  # no case, no whitespace at all
    if not value or not all(names) or (not plain and any(n != n.lower() or n != n.strip() for n in names)):
        raise ValueError(f"SignedHeaders must be lower-case names separated by ';': {value!r}")
    return names


def parse_signature(value: str) -> str:
    if not _HEX64.fullmatch(value):
        raise ValueError(f"Signature must be 64 lower-case hex digits: {value!r}")
    return value


def parse_authorization(value: str) -> Authorization:
    """Parse an ``Authorization`` header value; ``ValueError`` says what is wrong.

    Accepts ``,`` and ``, `` between components (the S3 docs use the first,
    the SDKs the second), in any order.
    """
    # The usual form ends with the signature, and all before it repeats request
    # after request (same key, day, region and signed names): parse that once.
    head, mark, sig = value.rpartition(", Signature=")
    if mark and _HEX64.fullmatch(sig):
        try:
            parts = _parse_authorization_head(head)
        except ValueError:
            pass  # let the full parse below say what is wrong
        else:
            return Authorization(*parts, sig)
    return _parse_authorization(value)


@functools.lru_cache(maxsize=256)
def _parse_authorization_head(head: str) -> tuple[str, str, str, str, tuple[str, ...]]:
    """(akid, date, region, service, signed headers) of an Authorization value without its signature."""
    auth = _parse_authorization(f"{head}, Signature={'0' * 64}")
    return auth.access_key_id, auth.date_stamp, auth.region, auth.service, auth.signed_headers


def _parse_authorization(value: str) -> Authorization:
    scheme, _, rest = value.strip().partition(" ")
    if scheme != ALGORITHM:
        raise ValueError(f"unsupported authorization scheme {scheme!r}; expecting {ALGORITHM}")
    fields: dict[str, str] = {}
    for component in rest.split(","):
        name, eq, field_value = component.strip().partition("=")
        if not eq:
            raise ValueError(f"the authorization component {component.strip()!r} is malformed")
        if name in fields:
            raise ValueError(f"the authorization component {name!r} appears twice")
        fields[name] = field_value.strip()
    missing = [n for n in ("Credential", "SignedHeaders", "Signature") if n not in fields]
    if missing or len(fields) != 3:
        raise ValueError(f"expecting Credential, SignedHeaders and Signature; got {sorted(fields)}")
    akid, date_stamp, region, service = parse_credential(fields["Credential"])
    return Authorization(
        akid, date_stamp, region, service, parse_signed_headers(fields["SignedHeaders"]), parse_signature(fields["Signature"])
    )


def amz_date_of(now: datetime | float) -> str:
    """``YYYYMMDDTHHMMSSZ`` for an aware datetime or epoch seconds."""
    seconds = now.timestamp() if isinstance(now, datetime) else now
    return time.strftime(AMZ_DATE_FORMAT, time.gmtime(seconds))


def authorization_header(
    method: str,
    raw_path: str | bytes,
    raw_query: str | bytes,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    signed_names: Iterable[str],
    payload_hash: str,
    *,
    amz_date: str,
    access_key_id: str,
    secret: str,
    region: str,
    service: str = "s3",
    s3: bool = True,
) -> str:
    """Sign one request and return its ``Authorization`` header value."""
    names = tuple(signed_names)
    scope = credential_scope(amz_date[:8], region, service)
    creq = canonical_request(method, raw_path, raw_query, headers, names, payload_hash, s3=s3)
    sig = signature(signing_key(secret, amz_date[:8], region, service), string_to_sign(amz_date, scope, creq))
    return format_authorization(access_key_id, scope, names, sig)


class SigV4Auth(httpx.Auth):
    """Header-signs every request of an ``httpx`` client (SigV4, ``s3`` by default).

    Signs every header present except ``UNSIGNED_HEADERS`` (as botocore does),
    after setting ``x-amz-date``, ``x-amz-content-sha256`` and the session token
    header.  A caller-set ``x-amz-content-sha256`` is kept (hash big bodies off
    the event loop, or name a streaming mode).  The signing key is cached.
    """

    # A stream body is signed UNSIGNED-PAYLOAD rather than buffered: httpx
    # already holds bytes bodies in memory, and buffering streams would break
    # the sink's bounded-memory rule.  (So this is False, not True.)
    requires_request_body = False

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        region: str,
        *,
        service: str = "s3",
        session_token: str | None = None,
        session_token_header: str = "x-amz-security-token",
        unsigned_payload: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.access_key_id = access_key_id
        self._secret = secret_access_key
        self.region = region
        self.service = service
        self._session_token = session_token
        self._session_token_header = session_token_header
        self.unsigned_payload = unsigned_payload
        self._clock = clock or time.time

    def __repr__(self) -> str:
        return f"SigV4Auth(access_key_id={self.access_key_id!r}, region={self.region!r}, service={self.service!r})"

    def _payload_hash(self, request: httpx.Request) -> str:
        if self.unsigned_payload:
            return UNSIGNED_PAYLOAD
        try:
            body = request.content
        except httpx.RequestNotRead:
            return UNSIGNED_PAYLOAD
        return hashlib.sha256(body).hexdigest()

    def sign(self, request: httpx.Request) -> httpx.Request:
        """Add the SigV4 headers to ``request`` in place and return it."""
        headers = [
            (name.decode("latin-1").lower(), value.decode("utf-8", "surrogateescape"))
            for name, value in request.headers.raw
        ]
        raw_path, _, raw_query = request.url.raw_path.partition(b"?")
        for name, value in self.headers_for(request.method, raw_path, raw_query, headers, request):
            request.headers[name] = value
        return request

    def headers_for(self, method: str, raw_path: bytes, raw_query: bytes, headers: list[tuple[str, str]],
                    body: httpx.Request | bytes = b"") -> list[tuple[str, str]]:
        """The headers signing adds to a request that has ``headers`` (names lower-case), in order,
        ``authorization`` last: for a request built without httpx (``sink.client``'s direct path)."""
        amz_date = amz_date_of(self._clock())
        added = [("x-amz-date", amz_date)]
        payload = next((value for name, value in headers if name == "x-amz-content-sha256"), None)
        if payload is None:
            payload = self._payload_hash(body) if isinstance(body, httpx.Request) else (
                UNSIGNED_PAYLOAD if self.unsigned_payload else hashlib.sha256(body).hexdigest())
            added.append(("x-amz-content-sha256", payload))
        if self._session_token is not None:
            added.append((self._session_token_header, self._session_token))
        replaced = {name for name, _ in added}
        every = [(name, value) for name, value in headers if name not in replaced] + added
        signed = {name for name, _ in every if name not in UNSIGNED_HEADERS}
        added.append(("authorization", authorization_header(
            method, raw_path, raw_query, every, signed, payload,
            amz_date=amz_date, access_key_id=self.access_key_id, secret=self._secret,
            region=self.region, service=self.service,
        )))  # fmt: skip
        return added

    def auth_flow(self, request: httpx.Request):  # type: ignore[override]
        yield self.sign(request)
