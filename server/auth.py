"""Who sent this request: SigV4 verification (header and presigned-URL auth).

The canonical request is built by ``sink.sigv4``, the same code the sink signs
with, so signer and verifier cannot drift apart.  This module adds the S3
policy around it: which scheme, which clock, which key, which headers must be
signed, and which S3 error each refusal is.  Pure: no I/O, no trio.

Refusals (``server.errors``), following what AWS S3 answers:
  no credentials, unknown scheme, unsigned x-amz-* headers,
  expired presigned URL, bad session token       → AccessDenied (403)
  SigV2 ``Authorization: AWS ...``               → InvalidRequest (400)
  both header and query auth                     → InvalidArgument (400)
  unparsable Authorization / wrong scope         → AuthorizationHeaderMalformed (400)
  bad presigned parameters                       → AuthorizationQueryParametersError (400)
  (no x-amz-content-sha256 on header auth is accepted for curl < 8, see ``BodySignature``)
  bad x-amz-content-sha256 value                 → InvalidArgument (400)
  unknown access key                             → InvalidAccessKeyId (403)
  request time more than 15 minutes off          → RequestTimeTooSkewed (403)
  signature (or a chunk signature) wrong         → SignatureDoesNotMatch (403)
"""

from __future__ import annotations

import calendar
import functools
import hmac
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import NamedTuple, Protocol

import structlog

from server.errors import (
    AccessDenied,
    AuthorizationQueryParametersError,
    ExpiredToken,
    AuthorizationHeaderMalformed,
    InvalidAccessKeyId,
    InvalidArgument,
    InvalidRequest,
    InvalidToken,
    NotImplemented_,
    RequestTimeTooSkewed,
    S3Error,
    SignatureDoesNotMatch,
)
from sink import sigv4

log = structlog.get_logger("tailbucket.server.auth")

MAX_SKEW_SECONDS = 15 * 60
MAX_PRESIGNED_EXPIRES = 7 * 24 * 3600  # 604800, the SigV4 query-auth limit
S3EXPRESS_SERVICE = "s3express"  # S3 Express One Zone signs with this service name; we accept it as s3
SESSION_TOKEN_HEADER = "x-amz-s3session-token"  # S3 Express One Zone (CreateSession)
SESSION_TOKEN_QUERY = "X-Amz-S3session-Token"
PAYLOAD_MODES = frozenset(
    {sigv4.UNSIGNED_PAYLOAD, sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER, sigv4.STREAMING_UNSIGNED_TRAILER}
)
# ``AuthResult.payload`` when the signature covers a body not yet read (see BodySignature).
BODY_SIGNATURE_PENDING = "BODY-SIGNATURE-PENDING"
QUERY_AUTH_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Expires")
_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")



class Keyring(Protocol):
    def secret_for(self, access_key_id: str) -> str | None: ...


@dataclass(frozen=True)
class StaticKeyring:
    """Fixed access key id → secret pairs (config, tests)."""

    secrets: Mapping[str, str]

    def secret_for(self, access_key_id: str) -> str | None:
        return self.secrets.get(access_key_id)


@dataclass(frozen=True)
class Session:
    """Temporary credentials behind an ``x-amz-s3session-token`` (S3 Express CreateSession)."""

    access_key_id: str
    secret: str
    expires_at: float  # epoch seconds


SessionLookup = Callable[[str], "Session | None"]
# Headers as check_signature takes them: (name, value) pairs, or lower-case name -> value if none repeats.
_Headers = Iterable[tuple[str, str]] | Mapping[str, str]


class ChunkVerifier:
    """Checks the chained signatures of an aws-chunked body, seeded by the request's.

    Each chunk signs the previous signature, so chunks cannot be dropped,
    reordered or replayed (sigv4-streaming.html); the trailer signs the last.
    """

    def __init__(self, key: bytes, amz_date: str, scope: str, seed_signature: str) -> None:
        self._key = key
        self._amz_date = amz_date
        self._scope = scope
        self._previous = seed_signature
        self.chunks_verified = 0

    def __repr__(self) -> str:
        return f"ChunkVerifier(scope={self._scope!r}, chunks_verified={self.chunks_verified})"

    def _check(self, string_to_sign: str, provided: str, what: str) -> None:
        expected = sigv4.signature(self._key, string_to_sign)
        if not _same(expected, provided):
            raise SignatureDoesNotMatch(f"The {what} signature we calculated does not match the one you provided.")
        self._previous = expected

    def verify_chunk(self, chunk_sha256_hex: str, chunk_signature: str) -> None:
        sts = sigv4.chunk_string_to_sign(self._amz_date, self._scope, self._previous, chunk_sha256_hex)
        self._check(sts, chunk_signature, f"chunk {self.chunks_verified}")
        self.chunks_verified += 1

    def verify_trailer(self, trailer_lines: list[tuple[str, str]], trailer_signature: str) -> None:
        sts = sigv4.trailer_string_to_sign(self._amz_date, self._scope, self._previous, trailer_lines)
        self._check(sts, trailer_signature, "trailer")


class BodySignature:
    """A signature over a body whose SHA-256 is known only once it is read.

    curl before 8.x (``--aws-sigv4``) sends no ``x-amz-content-sha256`` but
    signs the body's SHA-256 (curl/curl#8810).  AWS refuses such requests; we
    accept them because curl is a client we promise to serve.  Everything but
    the signature is checked up front; hash the body, then call ``verify``
    before committing anything.
    """

    def __init__(self, check: Callable[[str], object]) -> None:
        self._check = check

    def verify(self, body_sha256_hex: str) -> None:
        """Raise SignatureDoesNotMatch unless the request was signed for this body."""
        self._check(body_sha256_hex)


class AuthResult(NamedTuple):
    """An authenticated request: who, and what its body must be.

    ``payload`` is the lower-case hex SHA-256 the body must have,
    ``UNSIGNED-PAYLOAD``, one of the ``STREAMING-*`` modes, or
    ``BODY-SIGNATURE-PENDING``; ``chunk_verifier`` is set for the two signed
    streaming modes, ``body_signature`` for the pending one.  (A consumer that
    does not know the pending mode compares the body's hash to that string and
    refuses: it fails closed.)  A named tuple: immutable like a frozen dataclass,
    and made in a third of its time (one per request).
    """

    access_key_id: str
    payload: str
    chunk_verifier: ChunkVerifier | None = None
    body_signature: BodySignature | None = None


def _same(expected: str, provided: str) -> bool:
    return hmac.compare_digest(expected.encode(), provided.encode("utf-8", "surrogateescape"))


def _epoch(now: datetime | float) -> float:
    return now.timestamp() if isinstance(now, datetime) else float(now)


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


@functools.lru_cache(maxsize=256)
def parse_amz_date(value: str) -> float | None:
    """Epoch seconds of a strict ``YYYYMMDDTHHMMSSZ``; None if it is not one.

    Cached: concurrent clients sign with the same few seconds."""
    match = _AMZ_DATE.fullmatch(value)
    if match is None:
        return None
    try:
        moment = datetime(*map(int, match.groups()), tzinfo=timezone.utc)
    except ValueError:
        return None
    return float(calendar.timegm(moment.timetuple()))


def check_signature(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]] | Mapping[str, str],
    auth: sigv4.Authorization,
    secret: str,
    *,
    amz_date: str,
    payload_hash: str,
    s3: bool = True,
    exclude_query: Iterable[str] = (),
) -> bytes:
    """Recompute the signature; raise SignatureDoesNotMatch, else return the signing key.

    The cryptographic core without S3 policy (also what the generic AWS test
    suite is checked against).
    """
    creq = sigv4.canonical_request(
        method, raw_path, raw_query, headers, auth.signed_headers, payload_hash, s3=s3, exclude_query=exclude_query
    )
    sts = sigv4.string_to_sign(amz_date, auth.scope, creq)
    key = sigv4.signing_key(secret, auth.date_stamp, auth.region, auth.service)
    if not _same(sigv4.signature(key, sts), auth.signature):
        log.debug("sigv4_signature_mismatch", access_key_id=auth.access_key_id, canonical_request=creq)
        raise SignatureDoesNotMatch(
            AWSAccessKeyId=auth.access_key_id,
            StringToSign=sts,
            SignatureProvided=auth.signature,
            CanonicalRequest=creq.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
        )
    return key


def authenticate(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Sequence[tuple[str, str]],
    keys: Keyring,
    *,
    now: datetime | float,
    region: str | None = None,
    service: str = "s3",
    sessions: SessionLookup | None = None,
    first_values: Mapping[str, str] | None = None,
) -> AuthResult:
    """Authenticate one S3 request, or raise the S3 error AWS would give.

    ``headers`` are (lower-case name, value) pairs as received; ``now`` is an
    aware datetime or epoch seconds; ``region`` None accepts any region;
    ``sessions`` resolves ``x-amz-s3session-token`` values (None: refused);
    ``first_values``: the first value of each header by lower-case name, if the
    caller has them already (``Request.first_values``).
    """
    header_map = (  # the first value of each
        first_values if first_values is not None else {name.lower(): value for name, value in reversed(headers)}
    )
    params: dict[str, str] = {}
    if raw_query:
        for name_b, value_b in sigv4.parse_query(raw_query):
            params.setdefault(name_b.decode("utf-8", "surrogateescape"), value_b.decode("utf-8", "surrogateescape"))
    authorization = header_map.get("authorization")
    query_auth = "X-Amz-Algorithm" in params or "X-Amz-Credential" in params or "X-Amz-Signature" in params
    if authorization is not None and query_auth:
        raise InvalidArgument(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string "
            "parameter or the Authorization header should be specified",
            ArgumentName="Authorization",
        )
    policy = _Policy(header_map, keys, _epoch(now), region, service, sessions)
    if type(header_map) is dict and len(header_map) == len(headers):  # no name repeats: signed values looked up
        headers = header_map  # type: ignore[assignment]
    if authorization is not None:
        return policy.header_auth(method, raw_path, raw_query, headers, authorization)
    if query_auth:
        return policy.query_auth(method, raw_path, raw_query, headers, params)
    raise AccessDenied("Anonymous access is not allowed; sign the request with AWS Signature Version 4.")


@dataclass(slots=True)
class _Policy:
    """The S3 rules around ``check_signature``, for one request."""

    header_map: Mapping[str, str]  # lower-case name -> first value
    keys: Keyring
    now: float
    region: str | None
    service: str
    sessions: SessionLookup | None

    def header(self, name: str) -> str | None:
        return self.header_map.get(name)

    def header_auth(self, method: str, path: str, query: str, headers: _Headers, value: str) -> AuthResult:
        scheme = value.strip().partition(" ")[0]
        if scheme == "AWS":
            raise InvalidRequest("The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256.")
        if scheme != sigv4.ALGORITHM:
            raise AccessDenied(f"Unsupported Authorization Type {scheme!r}; use {sigv4.ALGORITHM}.")
        try:
            auth = sigv4.parse_authorization(value)
        except ValueError as exc:
            raise AuthorizationHeaderMalformed(f"The authorization header is malformed; {exc}") from exc
        declared = self.header("x-amz-content-sha256")
        payload = _payload_mode(declared) if declared is not None else self.implied_payload()
        amz_date, request_time = self.request_time()
        self.check_scope(auth, amz_date, AuthorizationHeaderMalformed)
        if abs(self.now - request_time) > MAX_SKEW_SECONDS:
            raise RequestTimeTooSkewed(
                RequestTime=self.header("x-amz-date") or self.header("date") or "",
                ServerTime=_iso(self.now),
                MaxAllowedSkewMilliseconds=str(MAX_SKEW_SECONDS * 1000),
            )
        secret = self.secret_for(auth.access_key_id, self.header(SESSION_TOKEN_HEADER))
        self.check_all_signed(auth.signed_headers)

        if payload == BODY_SIGNATURE_PENDING:

            def check(payload_hash: str) -> bytes:
                return check_signature(
                    method, path, query, headers, auth, secret, amz_date=amz_date, payload_hash=payload_hash
                )

            return AuthResult(auth.access_key_id, payload, body_signature=BodySignature(check))
        key = check_signature(
            method, path, query, headers, auth, secret, amz_date=amz_date,
            payload_hash=declared if declared is not None else payload,
        )  # fmt: skip
        return _result(auth, payload, key, amz_date)

    def query_auth(
        self, method: str, path: str, query: str, headers: _Headers, params: dict[str, str]
    ) -> AuthResult:
        if any(p not in params for p in QUERY_AUTH_PARAMS):
            raise AuthorizationQueryParametersError(
                "Query-string authentication version 4 requires the X-Amz-Algorithm, X-Amz-Credential, "
                "X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters."
            )
        if params["X-Amz-Algorithm"] != sigv4.ALGORITHM:
            raise AuthorizationQueryParametersError(f'X-Amz-Algorithm only supports "{sigv4.ALGORITHM}"')
        try:
            akid, date_stamp, region, service = sigv4.parse_credential(params["X-Amz-Credential"])
            auth = sigv4.Authorization(
                akid, date_stamp, region, service,
                sigv4.parse_signed_headers(params["X-Amz-SignedHeaders"]),
                sigv4.parse_signature(params["X-Amz-Signature"]),
            )  # fmt: skip
        except ValueError as exc:
            raise AuthorizationQueryParametersError(f"Error parsing the presigned URL parameters; {exc}") from exc
        amz_date = params["X-Amz-Date"]
        signed_at = parse_amz_date(amz_date)
        if signed_at is None:
            raise AuthorizationQueryParametersError("X-Amz-Date must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"")
        expires = params["X-Amz-Expires"]
        if not expires.isascii() or not expires.isdigit():
            raise AuthorizationQueryParametersError("X-Amz-Expires should be a non-negative number of seconds")
        if int(expires) > MAX_PRESIGNED_EXPIRES:
            raise AuthorizationQueryParametersError("X-Amz-Expires must be less than a week (in seconds) that is 604800")
        self.check_scope(auth, amz_date, AuthorizationQueryParametersError)
        if signed_at - self.now > MAX_SKEW_SECONDS:
            raise AccessDenied("Request is not valid yet")
        if self.now > signed_at + int(expires):
            raise AccessDenied(
                "Request has expired", **{"X-Amz-Expires": expires, "Expires": _iso(signed_at + int(expires)), "ServerTime": _iso(self.now)}
            )
        payload = params.get("X-Amz-Content-Sha256") or self.header("x-amz-content-sha256") or sigv4.UNSIGNED_PAYLOAD
        mode = _payload_mode(payload)
        token = params.get(SESSION_TOKEN_QUERY) or self.header(SESSION_TOKEN_HEADER)
        secret = self.secret_for(auth.access_key_id, token)
        self.check_all_signed(auth.signed_headers)
        key = check_signature(
            method, path, query, headers, auth, secret,
            amz_date=amz_date, payload_hash=payload, exclude_query=("X-Amz-Signature",),
        )  # fmt: skip
        return _result(auth, mode, key, amz_date)

    def implied_payload(self) -> str:
        """No x-amz-content-sha256: an empty body's hash is known now; any other is pending."""
        length = self.header("content-length")
        if self.header("transfer-encoding") is None and length in (None, "0"):
            return sigv4.EMPTY_SHA256
        return BODY_SIGNATURE_PENDING

    def request_time(self) -> tuple[str, float]:
        """The signing time: x-amz-date, else the Date header (as an amz date)."""
        amz_date = self.header("x-amz-date")
        if amz_date is not None:
            seconds = parse_amz_date(amz_date)
            if seconds is not None:
                return amz_date, seconds
        elif (date := self.header("date")) is not None:
            try:
                moment = parsedate_to_datetime(date)
            except (TypeError, ValueError):
                moment = None
            if moment is not None:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=timezone.utc)
                return sigv4.amz_date_of(moment), moment.timestamp()
        raise AccessDenied("AWS authentication requires a valid Date or x-amz-date header")

    def check_scope(self, auth: sigv4.Authorization, amz_date: str, error: type[S3Error]) -> None:
        if auth.date_stamp != amz_date[:8]:
            raise error(f"Invalid credential date {auth.date_stamp!r}. Date is not the same as X-Amz-Date {amz_date!r}.")
        if auth.service != self.service and not (self.service == "s3" and auth.service == S3EXPRESS_SERVICE):
            raise error(f"Credential should be scoped to correct service: '{self.service}'.")
        if self.region is not None and auth.region != self.region:
            raise error(f"The region '{auth.region}' is wrong; expecting '{self.region}'", Region=self.region)

    def secret_for(self, access_key_id: str, token: str | None) -> str:
        if token is not None:
            session = self.sessions(token) if self.sessions is not None else None
            if session is None or session.access_key_id != access_key_id:
                raise InvalidToken("The provided session token is malformed or otherwise invalid.")
            if session.expires_at <= self.now:
                raise ExpiredToken("The provided session token has expired.")
            return session.secret
        secret = self.keys.secret_for(access_key_id)
        if secret is None:
            raise InvalidAccessKeyId(AWSAccessKeyId=access_key_id)
        return secret

    def check_all_signed(self, signed_headers: Iterable[str]) -> None:
        """``host`` and every x-amz-* header present must be signed (x-amz-content-sha256 may not be, as on AWS)."""
        unsigned = _unsigned(tuple(signed_headers), tuple(self.header_map))
        if unsigned:
            raise AccessDenied("There were headers present in the request which were not signed", HeadersNotSigned=unsigned)


@functools.lru_cache(maxsize=256)
def _unsigned(signed_names: tuple[str, ...], present: tuple[str, ...]) -> str:
    """The required headers present but not signed, as AWS names them ("" if none).  Cached: a
    client sends the same headers and signs the same list request after request."""
    signed = frozenset(signed_names)
    unsigned = {"host"} - signed
    unsigned |= {n for n in present if n.startswith("x-amz-") and n not in signed and n != "x-amz-content-sha256"}
    return ", ".join(sorted(unsigned))


def _payload_mode(value: str) -> str:
    if value in PAYLOAD_MODES:
        return value
    if _SHA256_HEX.fullmatch(value):
        return value.lower()
    if value.startswith("STREAMING-AWS4-ECDSA-P256-SHA256"):
        raise NotImplemented_("SigV4a (ECDSA) signing is not implemented; use AWS4-HMAC-SHA256.")
    raise InvalidArgument(
        "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER], "
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER or a valid sha256 value.",
        ArgumentName="x-amz-content-sha256",
        ArgumentValue=value,
    )


def _result(auth: sigv4.Authorization, payload: str, key: bytes, amz_date: str) -> AuthResult:
    verifier = None
    if payload in (sigv4.STREAMING_SIGNED, sigv4.STREAMING_SIGNED_TRAILER):
        verifier = ChunkVerifier(key, amz_date, auth.scope, auth.signature)
    return AuthResult(auth.access_key_id, payload, verifier)
