"""The agent's side of the sink: one S3 client built from the config, and whether the sink answers.

``open_s3`` resolves credentials the way the AWS tools do (explicit keys in
the config, else the profile, else the ``AWS_*`` environment), and for a
directory bucket (``NAME--AZID--x-s3``) signs object requests with S3 Express
session keys.  Bodies are signed ``UNSIGNED-PAYLOAD`` with a CRC32 checksum
header, as tail-to-bucket does.

``SinkHealth`` is what ``/ready`` reports.  It learns from every request,
through a transport wrapped around httpx's own (transports are injected, never
patched): no answer or a 5xx marks the sink unreachable, any other answer
marks it reachable.  A definite refusal (no such bucket, access denied) is
recorded by the shipper; ``probe_bucket`` is how the app asks again.
``check_sink`` is ``tailbucket validate --check-sink``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
import structlog
import trio

from agent import events
from agent.config import SinkConfig
from agent.tail_to_bucket import is_directory_bucket
from sink.client import S3Client
from sink.credentials import resolve_config
from sink.errors import RemoteError, SinkError
from sink.plain_http import Answer, PlainHTTPTransport, Timeouts
from sink.protocol import Endpoint, aws_endpoint, s3express_endpoint
from sink.session import SESSION_TOKEN_HEADER, SIGNING_SERVICE, S3ExpressSessions, SessionGrant
from sink.sigv4 import SigV4Auth

log = structlog.get_logger()
_KEEP = object()
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 60.0


@dataclass
class SinkHealth:
    """Whether the sink can take appends now, and if not, why."""

    unreachable: str | None = "not contacted yet"  # no answer / 5xx, cleared by any other answer
    refusal: str | None = None  # a definite refusal, cleared by an acknowledged append or a good probe
    on_change: Callable[[bool], None] | None = field(default=None, repr=False)
    _changed: trio.Event = field(default_factory=trio.Event, repr=False)

    @property
    def ready(self) -> bool:
        return self.unreachable is None and self.refusal is None

    @property
    def reason(self) -> str:
        return self.refusal or self.unreachable or "ready"

    def answered(self, status: int) -> None:
        if status >= 500:
            self._set(unreachable=f"the sink answers HTTP {status}")
        else:
            self._set(unreachable=None)

    def no_answer(self, error: str) -> None:
        self._set(unreachable=error)

    def refused(self, error: str) -> None:
        self._set(refusal=error)

    def accepted(self) -> None:
        self._set(unreachable=None, refusal=None)

    async def wait_changed(self) -> None:
        await self._changed.wait()

    def _set(self, unreachable: object = _KEEP, refusal: object = _KEEP) -> None:
        before = self.ready
        if unreachable is not _KEEP:
            self.unreachable = unreachable  # type: ignore[assignment]
        if refusal is not _KEEP:
            self.refusal = refusal  # type: ignore[assignment]
        if self.ready != before:
            log.info(events.SINK_READY if self.ready else events.SINK_UNREADY, reason=self.reason)
            if self.on_change is not None:
                self.on_change(self.ready)
            self._changed.set()
            self._changed = trio.Event()


class HealthTransport(httpx.AsyncBaseTransport):
    """Passes requests to ``inner`` and tells ``health`` how each one went
    (``exchange`` too, the client's direct path, when ``inner`` is a ``PlainHTTPTransport``)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, health: SinkHealth) -> None:
        self.inner = inner
        self.health = health

    async def exchange(self, method: str, url: httpx.URL, headers: list[tuple[str, str]], body: bytes,
                       timeouts: Timeouts) -> Answer:
        assert isinstance(self.inner, PlainHTTPTransport)
        try:
            answer = await self.inner.exchange(method, url, headers, body, timeouts)
        except httpx.TransportError as exc:
            self.health.no_answer(f"{type(exc).__name__}: {exc or 'no details'}")
            raise
        self.health.answered(answer.status_code)
        return answer

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TransportError as exc:
            self.health.no_answer(f"{type(exc).__name__}: {exc or 'no details'}")
            raise
        self.health.answered(response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def open_s3(
    sink: SinkConfig,
    health: SinkHealth,
    *,
    env: Mapping[str, str] | None = None,
    max_connections: int = 8,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[S3Client]:
    """An ``S3Client`` for ``sink`` (blocking credential files are read in a thread)."""
    environment = dict(os.environ if env is None else env)
    cfg = await trio.to_thread.run_sync(
        lambda: resolve_config(
            environment,
            access_key_id=sink.access_key_id,
            secret_access_key=sink.secret_access_key,
            region=sink.region,
            endpoint_url=sink.endpoint_url,
            profile=sink.profile,
        )
    )
    express = is_directory_bucket(sink.bucket)
    if cfg.endpoint_url:
        endpoint = Endpoint.parse(cfg.endpoint_url)
    else:
        endpoint = s3express_endpoint(sink.bucket, cfg.region) if express else aws_endpoint(cfg.region)
    keys = SigV4Auth(cfg.access_key_id, cfg.secret_access_key, cfg.region, session_token=cfg.session_token,
                     service=SIGNING_SERVICE if express else "s3", unsigned_payload=True)
    if transport is not None:
        inner = transport
    elif endpoint.scheme == "http":
        # A third of httpcore's CPU per request, and no CA bundle loaded for nothing (~3 MB).
        inner = PlainHTTPTransport(max_connections)
    else:
        inner = httpx.AsyncHTTPTransport(limits=httpx.Limits(max_connections=max_connections,
                                                             max_keepalive_connections=max_connections))
    timeout = httpx.Timeout(REQUEST_TIMEOUT, connect=CONNECT_TIMEOUT)
    wrapped = HealthTransport(inner, health)
    direct = wrapped if isinstance(inner, PlainHTTPTransport) else None  # no httpx objects per request
    async with httpx.AsyncClient(transport=wrapped, timeout=timeout) as http:
        admin = S3Client(http, endpoint, auth=keys, addressing=sink.addressing, region=cfg.region, direct=direct)
        if not express:
            yield admin
            return

        def session_signer(grant: SessionGrant) -> httpx.Auth:
            return SigV4Auth(grant.access_key_id, grant.secret_access_key, cfg.region, service=SIGNING_SERVICE,
                             session_token=grant.session_token, session_token_header=SESSION_TOKEN_HEADER,
                             unsigned_payload=True)

        sessions = S3ExpressSessions(admin, signer=session_signer)
        yield S3Client(http, endpoint, auth=sessions, addressing=sink.addressing, region=cfg.region, direct=direct)


def probe_key(host: str) -> str:
    return f".tailbucket-probe/{host}/ready"


async def probe_bucket(client: S3Client, bucket: str, key: str) -> None:
    """Raise unless the bucket exists and these keys may read it.

    A one-byte GET of a key that normally does not exist: its 404 names
    ``NoSuchKey`` or ``NoSuchBucket`` and a refusal names its reason, where a
    HEAD answers with a bare status (and HeadBucket needs list permission
    that the agent does not).
    """
    try:
        await client.get_object(bucket, key, (0, 0))
    except RemoteError as exc:
        if exc.code not in ("NoSuchKey", "InvalidRange"):
            raise


@dataclass(frozen=True)
class Step:
    name: str
    error: str | None = None  # None: it worked


async def check_sink(client: S3Client, bucket: str, host: str) -> list[Step]:
    """Prove the bucket takes appends: create a probe object, append to it, read it back, delete it.

    Stops at the first failing step; the probe object is deleted whenever it was created.
    """
    key = f".tailbucket-probe/{host}/{secrets.token_hex(8)}"
    first, second = b"tailbucket probe: created\n", b"tailbucket probe: appended\n"
    steps: list[Step] = []
    created = False

    async def step(name: str, action: Callable[[], Awaitable[object]]) -> bool:
        try:
            await action()
        except (SinkError, ProbeMismatch) as exc:
            steps.append(Step(name, str(exc)))
            return False
        steps.append(Step(name))
        return True

    async def create() -> None:
        nonlocal created
        await client.append(bucket, key, 0, first)
        created = True

    async def read_back() -> None:
        got = await client.get_object(bucket, key)
        if got != first + second:
            raise ProbeMismatch(f"read back {len(got)} bytes that are not the {len(first + second)} appended")

    try:
        ok = await step(f"create {bucket}/{key}", create)
        ok = ok and await step(f"append at offset {len(first)}", lambda: client.append(bucket, key, len(first), second))
        ok = ok and await step("read it back", read_back)
    finally:
        if created:
            await step(f"delete {bucket}/{key}", lambda: client.delete_object(bucket, key))
    return steps


class ProbeMismatch(Exception):
    """The probe object did not read back as written."""
