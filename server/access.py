"""Access control at the router: who a request acts as, and the policy applied to it.

``server.policy`` decides; this module finds the principal behind an
authenticated request (a configured key, or a CreateSession session of one),
checks the operation before it runs, and for the operations whose answer
depends on more than the request hands the router a variant that applies the
grants inside the operation:

- PutObject, CopyObject, CompleteMultipartUpload: whether an ``append`` key
  would overwrite is only known under the object's lock, so the operation asks
  again there (``authorize_write``);
- CopyObject, UploadPartCopy: the source is only known once the operation has
  parsed ``x-amz-copy-source`` (``authorize_read(bucket, key)``);
- DeleteObjects: the keys are in the body; each is checked as a DeleteObject
  (``authorize_delete(key)``), a refused one becomes that key's ``<Error>``;
- AppendObjects: likewise, each item's key as an append (``authorize_append(key)``),
  a refused one becomes that item's 403 result;
- ListBuckets: shows only the buckets the key has grants on;
- CreateSession: records the session's grants (the creator's, narrowed to the
  bucket; a ``ReadOnly`` session may only read).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from server.auth import AuthResult, Session
from server.context import Context
from server.errors import AccessDenied
from server.http import Request, Response
from server.objects import WRITE_OFFSET
from server.policy import (
    EACH_APPEND,
    EACH_KEY,
    REPLACING_WRITES,
    SOURCE_READS,
    Keyring,
    Principal,
    authorize,
    may_scrape_metrics,
    may_see_bucket,
    session_principal,
)
from server.sessions import SessionStore, create_session
from server.storage import BucketInfo, Storage

log = structlog.get_logger("tailbucket.server.access")

Operation = Callable[[Context], Awaitable[Response]]
LISTINGS = frozenset({"ListObjects", "ListObjectsV2", "ListObjectVersions", "ListMultipartUploads"})
SESSION_MODE = "x-amz-create-session-mode"
MAX_REMEMBERED = 4096  # write decisions kept (forgotten all at once past this)


class AccessControl:
    """The keyring's grants and the grants of live sessions, applied per request."""

    def __init__(self, keyring: Keyring, sessions: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self.keyring = keyring
        self.sessions = sessions
        self._clock = clock
        self._session_grants: dict[str, tuple[Principal, float]] = {}  # session key id -> (grants, expires_at)
        self._keys: dict[str, Principal] = {}  # the keyring's principals, built once each
        # (key id, operation, bucket, key, appending) -> allowed even over an existing object.
        # A key id's grants never change (the keyring is fixed, a session's grants are its own).
        self._overwrites: dict[tuple[str, str, str | None, str | None, bool], bool] = {}

    def __repr__(self) -> str:
        return f"AccessControl({self.keyring!r}, live_sessions={len(self._session_grants)})"

    def principal_of(self, access_key_id: str) -> Principal:
        """The grants behind an authenticated key id (``server.auth`` has checked the key or session)."""
        principal = self._keys.get(access_key_id)
        if principal is not None:
            return principal
        principal = self.keyring.principal(access_key_id)
        if principal is not None:
            self._keys[access_key_id] = principal  # the keyring is fixed for the server's life
            return principal
        if access_key_id in self._session_grants:
            return self._session_grants[access_key_id][0]
        raise AccessDenied(f"Access Denied: no grants for {access_key_id}")

    def guard(
        self, handler: Operation, operation: str, auth: AuthResult, request: Request,
        bucket: str | None, key: str | None, query: dict[str, str],
    ) -> Operation:  # fmt: skip
        """Raise AccessDenied if the request may not run; else the operation to run for it."""
        principal = self.principal_of(auth.access_key_id)
        # Only PutObject honours the offset header; on any other write it must not pass for an append.
        appending = operation == "PutObject" and request.header(WRITE_OFFSET) is not None
        target = query.get("prefix", "") if operation in LISTINGS else key
        # A write allowed even over an existing object needs no second look under the lock
        # (the usual case: asking again is most of what access control costs a request).
        decided = False
        if operation in REPLACING_WRITES:
            # Remembered: an agent appends to the same few objects request after request.
            asked = (principal.access_key_id, operation, bucket, target, appending)
            decided = self._overwrites.get(asked)
            if decided is None:
                decided = _allowed(principal, operation, bucket, target, appending)
                if len(self._overwrites) >= MAX_REMEMBERED:
                    self._overwrites.clear()
                self._overwrites[asked] = decided
        if not decided:
            self._check(principal, operation, bucket, target, appending=appending)
        if operation == "ListBuckets":
            return lambda ctx: handler(dataclasses.replace(ctx, storage=VisibleBuckets(ctx.storage, principal)))
        if operation == "CreateSession":
            return functools.partial(self._create_session, principal)
        bound: dict[str, Callable[..., None]] = {}
        if operation in REPLACING_WRITES and not decided:
            bound["authorize_write"] = lambda existing: self._check(
                principal, operation, bucket, target, appending=appending, object_exists=existing is not None
            )
        if operation in SOURCE_READS:
            bound["authorize_read"] = lambda src_bucket, src_key: self._check(
                principal, SOURCE_READS[operation], src_bucket, src_key, within=operation
            )
        if operation in EACH_KEY:  # DeleteObjects: server.batch_delete asks per key
            bound["authorize_delete"] = lambda each_key: self._check(
                principal, EACH_KEY[operation], bucket, each_key, within=operation
            )
        if operation in EACH_APPEND:  # AppendObjects: server.batch_append asks per item's key
            bound["authorize_append"] = lambda each_key: self._check(
                principal, EACH_APPEND[operation], bucket, each_key, appending=True, within=operation
            )
        return functools.partial(handler, **bound) if bound else handler

    def check_metrics(self, auth: AuthResult) -> None:
        """Scraping with ``observability.require_auth``: admin on every bucket, or a ``metrics`` grant."""
        principal = self.principal_of(auth.access_key_id)
        if not may_scrape_metrics(principal):
            log.info("access_denied", access_key=principal.access_key_id, operation="Metrics")
            raise AccessDenied(f"Access Denied: {principal.access_key_id} may not read the metrics")

    @staticmethod
    def _check(
        principal: Principal, operation: str, bucket: str | None, target: str | None, *,
        appending: bool = False, object_exists: bool | None = None, within: str | None = None,
    ) -> None:  # fmt: skip
        """``authorize``, logging a refusal; ``within``: the request's operation when this checks a part of it."""
        try:
            authorize(principal, operation, bucket, target, appending=appending, object_exists=object_exists)
        except AccessDenied as exc:
            log.info(
                "access_denied", access_key=principal.access_key_id, operation=operation, within=within,
                bucket=bucket, key=target, object_exists=object_exists, reason=exc.message,
            )  # fmt: skip
            raise

    async def _create_session(self, owner: Principal, ctx: Context) -> Response:
        read_only = ctx.request.header(SESSION_MODE) == "ReadOnly"
        return await create_session(ctx, _RecordingSessions(self, owner, read_only))

    def _remember(self, session: Session, principal: Principal) -> None:
        now = self._clock()
        self._session_grants = {k: v for k, v in self._session_grants.items() if v[1] > now}  # forget expired ones
        self._session_grants[session.access_key_id] = (principal, session.expires_at)


def _allowed(principal: Principal, operation: str, bucket: str | None, target: str | None, appending: bool) -> bool:
    """Whether the write is allowed even if the object exists (then it is allowed either way)."""
    try:
        authorize(principal, operation, bucket, target, appending=appending, object_exists=True)
    except AccessDenied:
        return False
    return True


@dataclasses.dataclass
class _RecordingSessions:
    """The session store as one CreateSession sees it: each new session gets its grants recorded."""

    access: AccessControl
    owner: Principal
    read_only: bool

    def create(self, owner: str, bucket: str) -> tuple[str, Session]:
        token, session = self.access.sessions.create(owner, bucket)
        grants = session_principal(self.owner, session.access_key_id, bucket, read_only=self.read_only)
        self.access._remember(session, grants)
        return token, session


class VisibleBuckets:
    """The storage as ListBuckets sees it for one principal: only buckets it has grants on."""

    def __init__(self, storage: Storage, principal: Principal) -> None:
        self._storage = storage
        self._principal = principal

    async def list_buckets(self) -> list[BucketInfo]:
        return [b for b in await self._storage.list_buckets() if may_see_bucket(self._principal, b.name)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

