"""S3 operations over an injected ``httpx.AsyncClient``.

One method per operation the sink needs: HEAD, append (PUT with an offset),
many objects' appends at once (tailbucket's AppendObjects), PUT, GET, create
bucket, delete; ``send`` for anything else. Each builds its request with
``sink.protocol``, sends it through the client it was given (so tests inject
a transport instead of patching anything), and turns the answer into a value
or a ``sink.errors`` exception. httpx exceptions never leave this module.

Bodies are ``bytes`` with a fixed Content-Length: never chunked transfer
encoding, which S3 Express refuses for appends.

A request signed with ``SigV4Auth`` (every request the sink makes) goes
straight to the client's transport: httpx's redirect, cookie and auth-flow
machinery costs a third of a millisecond per request and does nothing for
S3 (no redirects followed, no cookies).  Given a ``direct`` exchange (an
http:// endpoint's ``PlainHTTPTransport``, maybe behind the agent's health
wrapper) they skip httpx's request and response objects too: signed
headers go to h11 as a list and the answer comes back as an ``Answer``.
Anything else goes through ``AsyncClient.send``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import httpx
import structlog

from . import append_batch, protocol
from .errors import (
    AuthError,
    ConfigError,
    NotFoundError,
    OffsetMismatchError,
    RemoteError,
    ServerError,
    ThrottledError,
    TooManyAppends,
    TransportError,
)
from .plain_http import Answer, Timeouts, timeouts_of
from .protocol import Addressing, Checksum, Endpoint, Outcome
from .sigv4 import SigV4Auth

log = structlog.get_logger()
MAX_CACHED_URLS = 4096  # parsed object URLs kept (a few hundred bytes each)


@runtime_checkable
class BucketAuth(Protocol):
    """Auth that depends on the bucket (S3 Express sessions are per bucket)."""

    def auth_for(self, bucket: str) -> httpx.Auth: ...


class DirectExchange(Protocol):
    """A round trip without httpx's objects (``PlainHTTPTransport.exchange``)."""

    async def exchange(self, method: str, url: httpx.URL, headers: list[tuple[str, str]], body: bytes,
                       timeouts: Timeouts) -> Answer: ...


@dataclass(frozen=True)
class ObjectState:
    """What HEAD says about an object."""

    size: int
    etag: str | None


@dataclass(frozen=True)
class AppendAck:
    """A successful append. ``new_size`` is ``x-amz-object-size`` when the
    server sent it (``reported_size``), else offset + body length."""

    new_size: int
    etag: str | None
    reported_size: int | None


_ERRORS: dict[Outcome, type[RemoteError]] = {
    Outcome.OFFSET_MISMATCH: OffsetMismatchError,
    Outcome.NOT_FOUND: NotFoundError,
    Outcome.AUTH: AuthError,
    Outcome.THROTTLED: ThrottledError,
    Outcome.SERVER: ServerError,
    Outcome.FATAL: RemoteError,
}


class S3Client:
    """The sink's S3 operations against one endpoint."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        endpoint: str | Endpoint,
        *,
        auth: httpx.Auth | BucketAuth | None = None,
        addressing: Addressing = "auto",
        checksum: Checksum = "crc32",
        region: str | None = None,
        direct: DirectExchange | None = None,
    ) -> None:
        self._http = http
        self._direct = direct
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self._auth = auth
        self.addressing: Addressing = addressing
        self.checksum: Checksum = checksum
        self.region = region
        self.requests_sent = 0
        self.in_flight = 0
        self.last_error: str | None = None
        self._per_bucket = isinstance(auth, BucketAuth)  # a runtime Protocol check is slow: once
        self._timeout = http.timeout.as_dict()
        self._timeouts = timeouts_of(self._timeout)
        self._urls: dict[str, httpx.URL] = {}  # parsed once per object: parsing costs more than signing
        self._object_urls: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:
        return (
            f"<S3Client {self.endpoint} addressing={self.addressing} sent={self.requests_sent} "
            f"in_flight={self.in_flight} last_error={self.last_error!r}>"
        )

    # -- operations ---------------------------------------------------------

    async def head_object(self, bucket: str, key: str) -> ObjectState | None:
        """The object's size and ETag, or None if it does not exist."""
        url = self._object_url(bucket, key)
        response = await self.send(protocol.Request("HEAD", url), bucket, key, missing_ok=True)
        if response.status_code == 404:
            return None
        size = protocol.header_int(response.headers, "content-length")
        if size is None:
            raise RemoteError("HEAD answer has no valid Content-Length", code="BadResponse", status=response.status_code, bucket=bucket, key=key)
        return ObjectState(size, response.headers.get("etag"))

    async def append(
        self, bucket: str, key: str, offset: int, body: bytes, *, checksum: bool = True, crc32: int | None = None
    ) -> AppendAck:
        """Append ``body`` at ``offset`` (``crc32``: the body's, if already known). Raises
        OffsetMismatchError when the server refuses the offset, TooManyAppends on ``TooManyParts``."""
        url = self._object_url(bucket, key)
        request = protocol.append_request(url, offset, body, self.checksum if checksum else "none", crc32=crc32)
        response = await self.send(request, bucket, key, appending=True)
        reported = protocol.header_int(response.headers, protocol.OBJECT_SIZE_HEADER)
        new_size = reported if reported is not None else offset + len(body)
        return AppendAck(new_size, response.headers.get("etag"), reported)

    async def append_objects(self, bucket: str, items: Sequence[append_batch.BatchItem]) -> list[append_batch.ItemResult]:
        """Many objects' appends in one request (``sink.append_batch``): one result per item, in order.

        A refusal of the whole request raises as ``send`` does (a server without
        the extension refuses it); an answer that is not results raises
        ``RemoteError`` (code ``BadResponse``): then no item's fate is known."""
        url = protocol.bucket_url(self.endpoint, bucket, self.addressing, append_batch.SUBRESOURCE)
        body = append_batch.encode_request(items)
        request = protocol.Request("POST", url, {"Content-Type": append_batch.CONTENT_TYPE,
                                                 "Content-Length": str(len(body))}, body)
        response = await self.send(request, bucket, None)
        try:
            return append_batch.decode_results(response.content, len(items))
        except append_batch.BatchFormatError as exc:
            raise RemoteError(str(exc), code="BadResponse", status=response.status_code, bucket=bucket) from None

    async def put_object(self, bucket: str, key: str, body: bytes, *, checksum: bool = True) -> str | None:
        """Create or replace the object; returns its ETag."""
        url = self._object_url(bucket, key)
        response = await self.send(protocol.put_request(url, body, self.checksum if checksum else "none"), bucket, key)
        return response.headers.get("etag")

    async def get_object(self, bucket: str, key: str, range: tuple[int, int | None] | None = None) -> bytes:
        """The whole object (or a byte range) in memory: for small objects and tests."""
        url = self._object_url(bucket, key)
        response = await self.send(protocol.get_request(url, range), bucket, key)
        return response.content

    async def create_bucket(self, bucket: str, *, exist_ok: bool = True) -> None:
        """Create the bucket; with ``exist_ok`` a bucket we already own is fine."""
        url = protocol.bucket_url(self.endpoint, bucket, self.addressing)
        try:
            await self.send(protocol.create_bucket_request(url, self.region), bucket, None)
        except RemoteError as exc:
            if not (exist_ok and exc.code == "BucketAlreadyOwnedByYou"):
                raise

    async def delete_object(self, bucket: str, key: str) -> None:
        """Delete the object (S3 answers 204 whether or not it existed)."""
        url = self._object_url(bucket, key)
        await self.send(protocol.Request("DELETE", url), bucket, key)

    # -- plumbing -----------------------------------------------------------

    def _auth_for(self, bucket: str) -> httpx.Auth | None:
        if self._per_bucket:
            return self._auth.auth_for(bucket)  # type: ignore[union-attr]
        return self._auth  # type: ignore[return-value]

    def _object_url(self, bucket: str, key: str) -> str:
        """The object's URL, built once per object (deciding the addressing parses the host)."""
        url = self._object_urls.get((bucket, key))
        if url is None:
            if len(self._object_urls) >= MAX_CACHED_URLS:
                self._object_urls.clear()
            url = self._object_urls[bucket, key] = protocol.object_url(self.endpoint, bucket, key, self.addressing)
        return url

    def _url(self, url: str) -> httpx.URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= MAX_CACHED_URLS:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def _exchange(self, req: protocol.Request, auth: httpx.Auth | None) -> httpx.Response | Answer:
        """One request, one answer (read whole): straight to the transport when we sign it ourselves."""
        if self._direct is not None and isinstance(auth, SigV4Auth):
            return await self._exchange_direct(req, auth)
        transport_for = getattr(self._http, "_transport_for_url", None)  # httpx's mount lookup (private: guarded)
        if not isinstance(auth, SigV4Auth) or self._http.auth is not None or transport_for is None:
            request = self._http.build_request(req.method, req.url, headers=req.headers, content=req.body)
            return await self._http.send(request, auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT)
        url = self._url(req.url)
        request = httpx.Request(req.method, url, headers=req.headers, content=req.body,
                                extensions={"timeout": self._timeout})
        auth.sign(request)
        response = await transport_for(url).handle_async_request(request)
        response.request = request
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def _exchange_direct(self, req: protocol.Request, auth: SigV4Auth) -> Answer:
        """Headers as a list (names lower-case), signed, to the direct exchange."""
        assert self._direct is not None
        url = self._url(req.url)
        headers = [("host", url.netloc.decode("ascii"))]
        headers += [(name.lower(), value) for name, value in req.headers.items()]
        if req.body and "content-length" not in {name for name, _ in headers}:
            headers.append(("content-length", str(len(req.body))))
        raw_path, _, raw_query = url.raw_path.partition(b"?")
        headers += auth.headers_for(req.method, raw_path, raw_query, headers, req.body)
        return await self._direct.exchange(req.method, url, headers, req.body, self._timeouts)

    async def send(
        self,
        req: protocol.Request,
        bucket: str,
        key: str | None,
        *,
        appending: bool = False,
        missing_ok: bool = False,
    ) -> httpx.Response | Answer:
        """Send one request; return a 2xx (or a wanted 404), raise the rest.

        Public for operations this class does not wrap (S3 Express
        ``CreateSession`` in ``sink.session``)."""
        self.requests_sent += 1
        self.in_flight += 1
        try:
            response = await self._exchange(req, self._auth_for(bucket))
        except httpx.InvalidURL as exc:
            raise ConfigError(f"cannot build a URL for {bucket}/{key}: {exc}") from exc
        except httpx.UnsupportedProtocol as exc:
            raise ConfigError(f"endpoint {self.endpoint} is not usable: {exc}") from exc
        except httpx.TransportError as exc:
            self.last_error = type(exc).__name__
            what = f"{bucket}/{key}" if key else bucket
            raise TransportError(f"{req.method} {what}: {type(exc).__name__}: {exc or 'no details'}") from exc
        finally:
            self.in_flight -= 1
        if response.is_success or (missing_ok and response.status_code == 404):
            return response
        raise self._error(response, bucket, key, appending=appending)

    def _error(self, response: httpx.Response | Answer, bucket: str, key: str | None, *, appending: bool) -> Exception:
        info = protocol.parse_error(response.status_code, response.content, response.headers)
        self.last_error = info.code
        outcome = protocol.classify(info.status, info.code, appending=appending)
        log.debug("s3_error", code=info.code, status=info.status, bucket=bucket, key=key, request_id=info.request_id)
        if outcome is Outcome.TOO_MANY_PARTS:
            return TooManyAppends(f"server refused the append: {info.code}: {info.message}", bucket=bucket, key=key or "")
        message = info.message
        if outcome is Outcome.AUTH:
            message = f"{message} — {protocol.auth_hint(info.code)}"
        cls = _ERRORS.get(outcome, RemoteError)
        return cls(message, code=info.code, status=info.status, request_id=info.request_id, bucket=bucket, key=key)
