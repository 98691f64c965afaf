"""S3 Express One Zone session auth: CreateSession, cached per bucket.

Directory buckets authorise object requests with short-lived session
credentials (AWS S3 User Guide, "Authorizing Zonal endpoint API operations
with CreateSession"; API reference ``CreateSession``):

* ``GET /{bucket}?session``, signed with the long-term (IAM) credentials,
  answers ``CreateSessionResult/Credentials``: ``AccessKeyId``,
  ``SecretAccessKey``, ``SessionToken``, ``Expiration`` (sessions last 5 minutes).
* Object requests are then signed with SigV4 using the session key pair, the
  token goes in ``x-amz-s3session-token`` (not ``x-amz-security-token``), and
  the signing service name is ``s3express`` (botocore's endpoint rules give
  directory buckets ``signingName: s3express``, auth scheme ``sigv4-s3express``).

A grant is reused until ``refresh_margin`` seconds before it expires (60 s by
default; botocore refreshes S3 Express identities 45 s ahead). The lifetime is
measured on the server's clock (``Expiration`` minus the answer's ``Date``)
and then counted on trio's clock, so a skewed local clock does not matter.
A request answered ``ExpiredToken`` gets a fresh session and one more try.
"""

from __future__ import annotations

import email.utils
import xml.etree.ElementTree as ET
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import structlog
import trio

from . import protocol
from .client import S3Client
from .errors import RemoteError

log = structlog.get_logger()

SESSION_TOKEN_HEADER = "x-amz-s3session-token"
SIGNING_SERVICE = "s3express"


@dataclass(frozen=True)
class SessionGrant:
    """Temporary credentials from ``CreateSession``."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    server_time: datetime | None = None  # the answer's Date header: lifetime on the server's clock


SignerFactory = Callable[[SessionGrant], httpx.Auth]


def parse_create_session(body: bytes, headers: Mapping[str, str]) -> SessionGrant:
    """Read ``CreateSessionResult/Credentials``; ValueError if it is not there."""
    try:
        root = ET.fromstring(body[: protocol.MAX_ERROR_BODY])
    except ET.ParseError as exc:
        raise ValueError(f"CreateSession answer is not XML: {exc}") from exc
    creds = next((el for el in root.iter() if protocol.strip_ns(el.tag) == "Credentials"), None)
    if creds is None:
        raise ValueError("CreateSession answer has no Credentials element")
    f = {protocol.strip_ns(c.tag): (c.text or "").strip() for c in creds}
    missing = [k for k in ("AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration") if not f.get(k)]
    if missing:
        raise ValueError(f"CreateSession answer lacks {', '.join(missing)}")
    expiration = datetime.fromisoformat(f["Expiration"])
    server_time = None
    if date := headers.get("date"):
        try:
            server_time = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError):
            server_time = None
    return SessionGrant(
        f["AccessKeyId"],
        f["SecretAccessKey"],
        f["SessionToken"],
        expiration if expiration.tzinfo else expiration.replace(tzinfo=timezone.utc),
        server_time,
    )


async def create_session(client: S3Client, bucket: str, mode: str | None = None) -> SessionGrant:
    """``GET /{bucket}?session`` through ``client`` (signed with IAM credentials)."""
    url = protocol.bucket_url(client.endpoint, bucket, client.addressing, query="session")
    headers = {"x-amz-create-session-mode": mode} if mode else {}
    response = await client.send(protocol.Request("GET", url, headers), bucket, None)
    try:
        return parse_create_session(response.content, response.headers)
    except ValueError as exc:
        raise RemoteError(str(exc), code="BadResponse", status=response.status_code, bucket=bucket) from exc


def sigv4_session_signer(region: str) -> SignerFactory:
    """Sign with ``sink.sigv4.SigV4Auth`` using a session grant."""
    from .sigv4 import SigV4Auth  # imported late: the signer module is optional for tests

    def make(grant: SessionGrant) -> httpx.Auth:
        return SigV4Auth(
            grant.access_key_id,
            grant.secret_access_key,
            region,
            service=SIGNING_SERVICE,
            session_token=grant.session_token,
            session_token_header=SESSION_TOKEN_HEADER,
        )

    return make


class S3ExpressSessions:
    """One cached CreateSession grant per bucket; an httpx.Auth per bucket.

    ``create_client`` sends CreateSession and must be signed with the
    long-term credentials (service ``s3express``). Pass the instance as the
    ``auth`` of the S3Client used for object requests.
    """

    def __init__(
        self,
        create_client: S3Client,
        *,
        signer: SignerFactory,
        refresh_margin: float = 60.0,
        mode: str | None = None,
        wall_clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._client = create_client
        self._signer = signer
        self.refresh_margin = refresh_margin
        self.mode = mode
        self._wall_clock = wall_clock or (lambda: datetime.now(timezone.utc))
        self._grants: dict[str, tuple[SessionGrant, float]] = {}  # bucket -> (grant, refresh at, trio time)
        self._locks: dict[str, trio.Lock] = {}
        self.sessions_created = 0

    def __repr__(self) -> str:
        return f"<S3ExpressSessions buckets={sorted(self._grants)} created={self.sessions_created}>"

    def refresh_at(self, bucket: str) -> float | None:
        """The trio time when the bucket's grant will be replaced, if cached."""
        cached = self._grants.get(bucket)
        return None if cached is None else cached[1]

    def invalidate(self, bucket: str, grant: SessionGrant | None = None) -> None:
        """Forget the bucket's grant (only if it is still ``grant``, when given)."""
        cached = self._grants.get(bucket)
        if cached is not None and (grant is None or cached[0] is grant):
            del self._grants[bucket]

    async def credentials(self, bucket: str) -> SessionGrant:
        """A grant valid for at least ``refresh_margin`` more seconds.
        Concurrent callers for one bucket share a single CreateSession."""
        lock = self._locks.setdefault(bucket, trio.Lock())
        async with lock:
            cached = self._grants.get(bucket)
            if cached is not None and trio.current_time() < cached[1]:
                return cached[0]
            asked_at = trio.current_time()
            grant = await create_session(self._client, bucket, self.mode)
            lifetime = (grant.expiration - (grant.server_time or self._wall_clock())).total_seconds()
            # Short sessions (shorter than the margin) still get half their life.
            usable = lifetime - self.refresh_margin if lifetime > 2 * self.refresh_margin else lifetime / 2
            self._grants[bucket] = (grant, asked_at + max(usable, 0.0))
            self.sessions_created += 1
            log.info("session_created", bucket=bucket, lifetime=round(lifetime, 3), refresh_in=round(usable, 3))
            return grant

    def auth_for(self, bucket: str) -> httpx.Auth:
        return _SessionAuth(self, bucket)

    def sign(self, request: httpx.Request, grant: SessionGrant) -> httpx.Request:
        """Sign ``request`` in place with the grant's credentials."""
        flow = self._signer(grant).sync_auth_flow(request)
        return next(flow)


class _SessionAuth(httpx.Auth):
    """httpx.Auth for one bucket: fetch/refresh the session, then sign."""

    requires_request_body = True
    requires_response_body = True

    def __init__(self, sessions: S3ExpressSessions, bucket: str) -> None:
        self.sessions = sessions
        self.bucket = bucket

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("S3 Express session auth needs an httpx.AsyncClient")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        unsigned = request.headers.copy()
        grant = await self.sessions.credentials(self.bucket)
        response = yield self.sessions.sign(request, grant)
        await response.aread()  # httpx reads the body for us only in the base class's flow
        if _session_refused(response):
            log.info("session_refused", bucket=self.bucket, status=response.status_code)
            self.sessions.invalidate(self.bucket, grant)
            request.headers = unsigned
            grant = await self.sessions.credentials(self.bucket)
            yield self.sessions.sign(request, grant)


def _session_refused(response: httpx.Response) -> bool:
    """ExpiredToken / InvalidToken, or a bodiless 400/403 (HEAD cannot say why)."""
    if response.status_code not in (400, 403):
        return False
    if not response.content:
        return True
    info = protocol.parse_error(response.status_code, response.content, response.headers)
    return info.code in ("ExpiredToken", "InvalidToken")
