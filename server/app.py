"""Routing: from an HTTP request to one S3 operation, and S3 errors back to XML.

Every request is authenticated (SigV4), dispatched by method, addressing
(path-style or virtual-host-style) and sub-resource, and logged once.
"""

from __future__ import annotations

import time
from typing import Awaitable, Callable
from urllib.parse import unquote

import structlog

from server import buckets, copy, objects, routes, xml
from server.access import AccessControl
from server.auth import authenticate
from server.config import ServerConfig
from server.context import Context
from server.errors import (
    InternalError,
    InvalidArgument,
    InvalidBucketName,
    KeyTooLongError,
    MethodNotAllowed,
    NotImplemented_,
    S3Error,
)
from server.http import Request, Response
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, ServerMetrics
from server.policy import Keyring
from server.request_log import RequestLog
from server.sessions import SessionStore, create_session
from server.storage import Storage

log = structlog.get_logger("tailbucket.server")

Operation = Callable[[Context], Awaitable[Response]]
INTERNAL_PREFIX = "/_tailbucket/"  # '_' is not allowed in bucket names, so this never clashes
MAX_KEY_BYTES = 1024
MAX_REMEMBERED_ADDRESSES = 4096  # (Host, path) -> (bucket, key) kept (forgotten all at once past this)
# Sub-resources S3 has and this server does not (yet): a clean NotImplemented, never a wrong answer.
SUBRESOURCES = frozenset(
    "accelerate acl analytics attributes cors delete encryption intelligent-tiering inventory legal-hold "
    "lifecycle logging metrics notification object-lock ownershipControls partNumber policy policyStatus "
    "publicAccessBlock replication requestPayment restore retention select session tagging torrent "
    "uploadId uploads versioning versions website".split()
)


def _body_length(response: Response) -> int:
    """The response body's length: its Content-Length header, else a bytes body's size."""
    for name, value in response.headers:
        if name == "content-length":
            return int(value)
    return len(response.body) if isinstance(response.body, bytes) else 0


def parse_query(raw: str) -> dict[str, str]:
    """Decoded query parameters; '+' stays '+' (S3 clients encode spaces as %20)."""
    params: dict[str, str] = {}
    for part in raw.split("&") if raw else ():
        name, _, value = part.partition("=")
        try:
            params.setdefault(unquote(name, errors="strict"), unquote(value, errors="strict"))
        except UnicodeDecodeError:
            raise InvalidArgument("The query string is not valid UTF-8.") from None
    return params


class S3App:
    """The request handler given to ``HTTPServer``."""

    def __init__(self, storage: Storage, config: ServerConfig, keys: Keyring) -> None:
        self.storage, self.config, self.keys = storage, config, keys
        self.sessions = SessionStore()
        self._addresses: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        self.access = AccessControl(keys, self.sessions)
        self.metrics = ServerMetrics(
            stats_cache_seconds=config.observability.stats_cache_seconds,
            commits=storage.commit_counts,
        )
        self._object_routes: dict[str, tuple[Operation, str]] = {
            "PUT": (objects.put_object, "PutObject"),
            # Not an S3 operation: `curl --data-binary` POSTs, and the append guide's curl commands must work.
            "POST": (objects.put_object, "PutObject"),
            "GET": (objects.get_object, "GetObject"),
            "HEAD": (self._head_object, "HeadObject"),
            "DELETE": (objects.delete_object, "DeleteObject"),
        }
        # The request log: its lines written once per turn of the event loop (server.request_log).
        self._request_log = RequestLog("tailbucket.server")

    def __repr__(self) -> str:
        return f"S3App(data_dir={str(self.config.data_dir)!r}, region={self.config.region!r})"

    def address(self, request: Request) -> tuple[str | None, str | None]:
        """(bucket, key) from a virtual-host-style Host header or a path-style path.

        Remembered per (Host, path): a client appends to the same objects request after request."""
        host = request.first_values().get("host") or ""
        asked = (host, request.path)
        found = self._addresses.get(asked)
        if found is None:
            found = self._address(host, request.path)
            if len(self._addresses) >= MAX_REMEMBERED_ADDRESSES:
                self._addresses.clear()
            self._addresses[asked] = found
        return found

    def _address(self, host: str, raw_path: str) -> tuple[str | None, str | None]:
        try:
            path = unquote(raw_path, errors="strict")
        except UnicodeDecodeError:
            raise InvalidArgument("The request path is not valid UTF-8.") from None
        host = host.rsplit(":", 1)[0].lower() if "]" not in host else ""
        for domain in self.config.virtual_host_domains:
            if host.endswith("." + domain):
                bucket, key = host[: -len(domain) - 1], path[1:]
                break
        else:
            bucket, _, key = path[1:].partition("/")
        if not bucket:
            return None, None
        if len(key) > MAX_KEY_BYTES // 4 and len(key.encode("utf-8")) > MAX_KEY_BYTES:  # at most 4 bytes a character
            raise KeyTooLongError(f"Your key is too long: {len(key.encode('utf-8'))} bytes (at most {MAX_KEY_BYTES}).")
        return bucket, key or None

    def route(
        self, method: str, bucket: str | None, key: str | None, query: dict[str, str], *, copying: bool = False
    ) -> tuple[Operation, str]:
        """``copying``: the request names a copy source (``x-amz-copy-source``)."""
        found = routes.route(method, bucket, key, query, copying)  # multipart, copy, versions, sub-resources...
        if found is not None:
            return found
        unsupported = set(SUBRESOURCES.intersection(query)) if query else set()
        if bucket is None:
            table = {"GET": (buckets.list_buckets, "ListBuckets")}
        elif key is None:
            if "location" in query:
                table = {"GET": (buckets.get_bucket_location, "GetBucketLocation")}
            elif "session" in query:
                unsupported.discard("session")
                table = {"GET": (self._create_session, "CreateSession")}
            else:
                table = {
                    "GET": (buckets.list_objects, "ListObjectsV2" if query.get("list-type") == "2" else "ListObjects"),
                    "PUT": (buckets.create_bucket, "CreateBucket"),
                    "HEAD": (buckets.head_bucket, "HeadBucket"),
                    "DELETE": (buckets.delete_bucket, "DeleteBucket"),
                }
        else:
            table = self._object_routes
        if unsupported:
            raise NotImplemented_(f"The {sorted(unsupported)[0]!r} sub-resource is not implemented.")
        if method not in table:
            raise MethodNotAllowed(f"The {method} method is not allowed against this resource.", Method=method)
        return table[method]

    async def _create_session(self, ctx: Context) -> Response:
        return await create_session(ctx, self.sessions)

    @staticmethod
    async def _head_object(ctx: Context) -> Response:
        return await objects.get_object(ctx, head=True)

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        bucket = key = None
        operation = "Unknown"
        try:
            if request.path.startswith(INTERNAL_PREFIX):
                operation = "Internal"
                response = await self._internal(request)
            else:
                bucket, key = self.address(request)
                query = parse_query(request.query)
                auth = authenticate(
                    request.method, request.path, request.query, request.headers, self.keys,
                    now=time.time(), region=self.config.region, sessions=self.sessions.lookup,
                    first_values=request.first_values(),
                )
                handler, operation = self.route(
                    request.method, bucket, key, query, copying=request.header(copy.COPY_SOURCE) is not None
                )
                handler = self.access.guard(handler, operation, auth, request, bucket, key, query)
                ctx = Context(request, request.request_id, bucket, key, query, self.storage, self.config, auth, self.metrics)
                response = await handler(ctx)
        except S3Error as exc:
            response = self._error(request, exc, bucket, key)
        except Exception:
            log.exception("internal_error", method=request.method, path=request.path, request_id=request.request_id)
            response = self._error(request, InternalError(), bucket, key)
        # A new list: handlers may answer with a shared one (buckets.XML_TYPE), which must not grow per request.
        response.headers = [*response.headers, ("x-amz-request-id", request.request_id)]
        bytes_in = request.body.content_length or 0
        bytes_out = 0 if request.method == "HEAD" else _body_length(response)
        seconds = time.perf_counter() - started
        appending = operation == "PutObject" and request.header(objects.WRITE_OFFSET) is not None
        self.metrics.observe(operation, response.status, bytes_in=bytes_in, bytes_out=bytes_out, seconds=seconds, appending=appending)
        self._request_log(
            method=request.method,
            operation=operation,
            bucket=bucket,
            key=key,
            status=response.status,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            duration_ms=round(seconds * 1000, 3),
            request_id=request.request_id,
        )
        return response

    def _error(self, request: Request, exc: S3Error, bucket: str | None, key: str | None) -> Response:
        resource = exc.resource or "/" + "/".join(p for p in (bucket, key) if p)
        extra = dict(exc.extra)
        if isinstance(exc, InvalidBucketName) or exc.code == "NoSuchBucket":
            extra.setdefault("BucketName", bucket or "")
        if exc.code == "NoSuchKey" and key:
            extra.setdefault("Key", key)
        body = xml.error_body(exc.code, exc.message, resource=resource, request_id=request.request_id, extra=extra)
        headers = [("content-type", "application/xml")]
        if request.method == "HEAD":
            return Response(exc.status, headers)
        return Response(exc.status, headers, body)

    async def _internal(self, request: Request) -> Response:
        name = request.path[len(INTERNAL_PREFIX):]
        if name == "health":
            return Response(200, [("content-type", "text/plain")], b"ok\n")
        if name == "ready":
            ready = await self.storage.is_writable() if hasattr(self.storage, "is_writable") else True
            return Response(200 if ready else 503, [("content-type", "text/plain")], b"ready\n" if ready else b"not ready\n")
        if name == "metrics" and request.method == "GET":
            if self.config.observability.require_auth:
                auth = authenticate(
                    request.method, request.path, request.query, request.headers, self.keys,
                    now=time.time(), region=self.config.region, sessions=self.sessions.lookup,
                )
                self.access.check_metrics(auth)
            return Response(200, [("content-type", METRICS_CONTENT_TYPE)], await self.metrics.render(self.storage.stats))
        raise NotImplemented_(f"No internal endpoint {request.path!r}.")
