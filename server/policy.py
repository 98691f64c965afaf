"""Access control: which access key may do what, and where.  Pure: no I/O, no trio.

A key holds grants; a grant is one role on one scope: a bucket (or every
bucket) and optionally a key prefix inside it.  A request is allowed when
one of its key's grants allows the operation on what it touches; otherwise
it is refused with ``AccessDenied`` before anything changes.  The roles are
cumulative (each may do what the one before it may), always within scope:

=====================================================  ====  ======  =====  =====
operation                                              read  append  write  admin
=====================================================  ====  ======  =====  =====
ListBuckets (lists only buckets the key has grants)    yes   yes     yes    yes
CreateBucket, DeleteBucket                             -     -       -      yes
HeadBucket, GetBucketLocation, CreateSession,          yes   yes     yes    yes
GetBucket<configuration> (Acl, Versioning, Policy...)
ListObjects(V2), ListObjectVersions,                   yes*  yes*    yes*   yes
ListMultipartUploads
GetObject, HeadObject, ListParts,                      yes   yes     yes    yes
GetObject<configuration> (Acl, Tagging, ...)
PutObject with x-amz-write-offset-bytes (append)       -     yes     yes    yes
AppendObjects (tailbucket's; each key as an append)    -     yes     yes    yes
PutObject, CopyObject: key missing                     -     yes     yes    yes
PutObject, CopyObject: key exists (overwrite)          -     -       yes    yes
CreateMultipartUpload, UploadPart, UploadPartCopy,     -     yes     yes    yes
AbortMultipartUpload
CompleteMultipartUpload, key missing / key exists      -     yes/-   yes    yes
DeleteObject, DeleteObjects (each key)                 -     -       yes    yes
any other operation (Put*/Delete* configuration ...)   -     -       -      yes
=====================================================  ====  ======  =====  =====

``*`` with a prefix-scoped grant, only listings whose ``prefix`` parameter
starts with the grant's prefix (as an AWS policy's ``s3:prefix`` condition).
Bucket-level operations need a grant on that bucket (any prefix).  An
``admin`` grant covers whole buckets (no prefix).  The ``metrics`` role is
outside this table: it allows only ``GET /_tailbucket/metrics`` when
``observability.require_auth`` is on (so does an admin grant on every bucket).

Some operations touch more than their own key (as with AWS's permissions):
CopyObject and UploadPartCopy also read their source, which must be allowed
as a GetObject (``SOURCE_READS``); DeleteObjects needs a ``write`` grant on the
bucket, then each key is checked as a DeleteObject (``EACH_KEY``) and a key
refused gets its own ``AccessDenied`` in the result while the others go.
AppendObjects likewise needs an ``append`` grant on the bucket, then checks
each item's key as an append (a PutObject with the offset, ``EACH_APPEND``).

``append`` is what an agent gets: it may add to its logs and read them back,
never rewrite or remove what it shipped.  Whether a PutObject overwrites
depends on the object existing *at the moment of the write*: callers check
once with ``object_exists=None`` (undecided cases pass) and again under the
object's lock with the truth (``server.access``: PutObject, CopyObject,
CompleteMultipartUpload).  Only a PutObject appends: the offset header on
any other write is ignored here, as those operations ignore it.

Sessions (CreateSession) get the creating key's grants narrowed to the
session's bucket; ``ReadOnly`` sessions are capped at ``read``.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from server.errors import AccessDenied


class Role(str, enum.Enum):
    READ = "read"
    APPEND = "append"
    WRITE = "write"
    ADMIN = "admin"
    METRICS = "metrics"  # scrape /_tailbucket/metrics only; no bucket access

    @functools.cached_property
    def level(self) -> int:
        """Rank among the cumulative bucket roles (0: no bucket access).  Kept on the
        member once computed: an Enum's hash is a Python call, and every request asks."""
        return _LEVELS[self]


_LEVELS = {Role.METRICS: 0, Role.READ: 1, Role.APPEND: 2, Role.WRITE: 3, Role.ADMIN: 4}
BUCKET_ROLES = (Role.READ, Role.APPEND, Role.WRITE, Role.ADMIN)


@dataclass(frozen=True)
class Grant:
    role: Role
    bucket: str | None = None  # None: every bucket
    prefix: str = ""  # keys starting with this ("" : the whole bucket)

    def covers_bucket(self, bucket: str) -> bool:
        return self.role is not Role.METRICS and (self.bucket is None or self.bucket == bucket)

    def covers(self, bucket: str, key: str) -> bool:
        return self.covers_bucket(bucket) and key.startswith(self.prefix)

    def __str__(self) -> str:
        where = "*" if self.bucket is None else self.bucket
        return f"{self.role.value}:{where}/{self.prefix}"


@dataclass(frozen=True)
class AccessKey:
    """A configured key: its secret and what it may do."""

    access_key: str
    secret_key: str
    grants: tuple[Grant, ...]

    def __repr__(self) -> str:  # never the secret
        return f"AccessKey({self.access_key!r}, grants=[{', '.join(map(str, self.grants))}])"


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: an access key (or a session of one) and its grants."""

    access_key_id: str
    grants: tuple[Grant, ...]


ROOT_GRANTS = (Grant(Role.ADMIN),)


class Keyring:
    """The configured keys: secrets for ``server.auth`` and grants for ``authorize``."""

    def __init__(self, keys: Iterable[AccessKey]) -> None:
        self._keys: dict[str, AccessKey] = {}
        for key in keys:
            if key.access_key in self._keys:
                raise ValueError(f"access key {key.access_key!r} is configured twice")
            self._keys[key.access_key] = key

    def __repr__(self) -> str:
        return f"Keyring(keys={sorted(self._keys)})"

    def secret_for(self, access_key_id: str) -> str | None:
        key = self._keys.get(access_key_id)
        return key.secret_key if key else None

    def principal(self, access_key_id: str) -> Principal | None:
        key = self._keys.get(access_key_id)
        return Principal(key.access_key, key.grants) if key else None


def session_principal(owner: Principal, session_key_id: str, bucket: str, *, read_only: bool) -> Principal:
    """A CreateSession session: the owner's grants on ``bucket`` only, capped at read if ReadOnly."""
    grants = []
    for grant in owner.grants:
        if grant.covers_bucket(bucket):
            role = Role.READ if read_only and grant.role.level > Role.READ.level else grant.role
            grants.append(Grant(role, bucket, grant.prefix))
    return Principal(session_key_id, tuple(grants))


def may_see_bucket(principal: Principal, bucket: str) -> bool:
    """Whether ListBuckets shows ``bucket`` to this principal."""
    return any(g.covers_bucket(bucket) for g in principal.grants)


def may_scrape_metrics(principal: Principal) -> bool:
    return any(g.role is Role.METRICS or (g.role is Role.ADMIN and g.bucket is None) for g in principal.grants)


# Configuration sub-resources answered read-only (``server.subresources``): reading them is reading.
BUCKET_CONFIG_READS = tuple(f"GetBucket{name}" for name in (
    "Acl", "Versioning", "Logging", "NotificationConfiguration", "AccelerateConfiguration", "RequestPayment",
    "Policy", "PolicyStatus", "LifecycleConfiguration", "Tagging", "Cors", "Website", "Encryption",
    "OwnershipControls", "PublicAccessBlock", "ObjectLockConfiguration", "Replication",
))  # fmt: skip
OBJECT_CONFIG_READS = ("GetObjectAcl", "GetObjectTagging", "GetObjectRetention", "GetObjectLegalHold")

# Operation -> (rule, minimum role).  Rules: what the operation touches, see ``authorize``.
_SERVICE, _BUCKET, _LISTING, _OBJECT, _CREATE = "service", "bucket", "listing", "object", "create"
RULES: dict[str, tuple[str, Role]] = {
    "ListBuckets": (_SERVICE, Role.READ),
    "CreateBucket": (_BUCKET, Role.ADMIN),
    "DeleteBucket": (_BUCKET, Role.ADMIN),
    "HeadBucket": (_BUCKET, Role.READ),
    "GetBucketLocation": (_BUCKET, Role.READ),
    "CreateSession": (_BUCKET, Role.READ),
    **{operation: (_BUCKET, Role.READ) for operation in BUCKET_CONFIG_READS},
    "ListObjects": (_LISTING, Role.READ),
    "ListObjectsV2": (_LISTING, Role.READ),
    "ListObjectVersions": (_LISTING, Role.READ),
    "ListMultipartUploads": (_LISTING, Role.READ),
    "GetObject": (_OBJECT, Role.READ),
    "HeadObject": (_OBJECT, Role.READ),
    "ListParts": (_OBJECT, Role.READ),
    **{operation: (_OBJECT, Role.READ) for operation in OBJECT_CONFIG_READS},
    "CreateMultipartUpload": (_OBJECT, Role.APPEND),
    "UploadPart": (_OBJECT, Role.APPEND),
    "UploadPartCopy": (_OBJECT, Role.APPEND),  # and its source, see SOURCE_READS
    "AbortMultipartUpload": (_OBJECT, Role.APPEND),
    "PutObject": (_CREATE, Role.APPEND),
    "CopyObject": (_CREATE, Role.APPEND),  # and its source, see SOURCE_READS
    "CompleteMultipartUpload": (_CREATE, Role.APPEND),
    "DeleteObject": (_OBJECT, Role.WRITE),
    "DeleteObjects": (_BUCKET, Role.WRITE),  # and each key, see EACH_KEY
    "AppendObjects": (_BUCKET, Role.APPEND),  # and each key, see EACH_APPEND
}
# Copies read a source object too: allowed when this operation is allowed on the source's bucket and key.
SOURCE_READS = {"CopyObject": "GetObject", "UploadPartCopy": "GetObject"}
# Batches act on many keys: after the request's own rule, each key is checked as this operation.
EACH_KEY = {"DeleteObjects": "DeleteObject"}
# AppendObjects' items: each key is checked as this operation appending (``appending=True``).
EACH_APPEND = {"AppendObjects": "PutObject"}
# Writes that may replace an object: for an ``append`` grant, decided again once the key's existence is known.
REPLACING_WRITES = frozenset(operation for operation, (rule, _) in RULES.items() if rule == _CREATE)


def authorize(
    principal: Principal,
    operation: str,
    bucket: str | None,
    key_name: str | None,
    *,
    appending: bool = False,
    object_exists: bool | None = None,
) -> None:
    """Raise AccessDenied unless ``principal`` may do ``operation``; return None if it may.

    ``key_name`` is the object key, or for listings the ``prefix`` parameter.
    ``appending``: a PutObject with ``x-amz-write-offset-bytes`` (ignored for
    any other operation: they replace whatever the header says).
    ``object_exists``: for PutObject/CopyObject/CompleteMultipartUpload, whether
    the key exists now; None (not known yet) lets an ``append`` grant through,
    and the caller must ask again once it knows.
    """
    rule, minimum = RULES.get(operation, _DEFAULT_RULE)
    if rule == _SERVICE:
        return
    if bucket is None:
        raise _denied(principal, operation, bucket, key_name)
    target = key_name or ""
    if rule == _BUCKET:
        allowed = any(g.covers_bucket(bucket) and g.role.level >= minimum.level for g in principal.grants)
    elif rule in (_LISTING, _OBJECT):
        allowed = any(g.covers(bucket, target) and g.role.level >= minimum.level for g in principal.grants)
    else:  # _CREATE: an append grant may add, never replace existing bytes
        best = max([g.role.level for g in principal.grants if g.covers(bucket, target)], default=0)
        if best >= _WRITE_LEVEL or (best == _APPEND_LEVEL and (appending and operation == "PutObject" or object_exists is not True)):
            return
        if best == _APPEND_LEVEL:
            hint = " (send x-amz-write-offset-bytes with the object's length)" if operation == "PutObject" else ""
            where = _where(bucket, key_name)
            raise AccessDenied(
                f"Access Denied: {principal.access_key_id} may append to {where} but not overwrite it by {operation}{hint}"
            )
        allowed = False
    if not allowed:
        raise _denied(principal, operation, bucket, key_name)


_DEFAULT_RULE = (_BUCKET, Role.ADMIN)
_WRITE_LEVEL, _APPEND_LEVEL = _LEVELS[Role.WRITE], _LEVELS[Role.APPEND]


def _where(bucket: str | None, key_name: str | None) -> str:
    return "/" + "/".join(p for p in (bucket, key_name) if p)


def _denied(principal: Principal, operation: str, bucket: str | None, key_name: str | None) -> AccessDenied:
    """The refusal, its message built only when there is one to give."""
    return AccessDenied(f"Access Denied: {principal.access_key_id} may not {operation} {_where(bucket, key_name)}")
