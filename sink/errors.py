"""Every way the append sink can fail, as one exception tree.

    SinkError                     base: anything the sink raises on purpose
    ├── ConfigError               bad settings: endpoint URL, roll-over policy, key
    │   └── CredentialsError      no usable credentials found; says what to set
    ├── RemoteError               S3 answered with an error: code, status, message, request id
    │   ├── AuthError             InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied, ...: fatal
    │   ├── NotFoundError         NoSuchKey / NoSuchBucket
    │   ├── OffsetMismatchError   the append's offset was refused (InvalidArgument / InvalidWriteOffset)
    │   ├── ThrottledError        503 SlowDown and friends: retriable
    │   └── ServerError           any other 5xx: retriable
    ├── ConflictError             the object is not what this writer expected (foreign writer, replaced object)
    ├── RollOverRequired          this object is full; write the rest to a new key
    │   ├── ObjectTooLarge        the roll-over policy's byte limit is reached
    │   └── TooManyAppends        the append limit is reached (S3 Express ``TooManyParts``)
    ├── AppendPending             an earlier append's outcome is unknown; retry that same data first
    └── TransportError            no answer: timeout, reset, refused connection (``from`` the httpx error)

Foreign exceptions are translated where they enter the sink (``raise
TransportError(...) from exc``) so callers need to know only this module.
Which errors are worth retrying is decided in ``sink.retry``, not here.
"""

from __future__ import annotations


class SinkError(Exception):
    """Base class: everything the sink raises on purpose derives from it."""


class ConfigError(SinkError):
    """Raised when settings cannot work: a malformed endpoint URL, an
    impossible roll-over policy, a profile that does not exist."""


class CredentialsError(ConfigError):
    """Raised when no access key / secret can be found (or only half of a
    pair); the message names the variables or files to set."""


class RemoteError(SinkError):
    """Raised when S3 answered with an error status.

    Carries what the S3 XML error body (or, for HEAD, the status) said, so a
    log line can be matched with the server's own logs by ``request_id``.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int,
        request_id: str | None = None,
        bucket: str | None = None,
        key: str | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.remote_message = message
        self.request_id = request_id
        self.bucket = bucket
        self.key = key
        where = f" on {bucket}/{key}" if bucket and key else f" on bucket {bucket}" if bucket else ""
        rid = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{status} {code}{where}: {message}{rid}")


class AuthError(RemoteError):
    """Raised on InvalidAccessKeyId, SignatureDoesNotMatch, AccessDenied,
    expired tokens or a skewed clock. Fatal: retrying cannot help; the message
    says what to fix."""


class NotFoundError(RemoteError):
    """Raised when the bucket or key does not exist (NoSuchBucket, NoSuchKey)."""


class OffsetMismatchError(RemoteError):
    """Raised when an append's ``x-amz-write-offset-bytes`` was refused:
    ``InvalidArgument`` on our server, ``InvalidWriteOffset`` on S3 Express.
    The object writer answers it by HEAD-ing the object and reconciling."""


class ThrottledError(RemoteError):
    """Raised on 503 SlowDown / ServiceUnavailable / throttling codes: back off
    and retry."""


class ServerError(RemoteError):
    """Raised on any other 5xx (and the 400 ``RequestTimeout``): the request
    may or may not have been applied; retry after reconciling."""


class ConflictError(SinkError):
    """Raised when the object is not what this writer expected: another
    writer appended, or the object was replaced or deleted. Never resolved by
    overwriting or skipping; the stream stops (or rolls to a new key)."""

    def __init__(self, message: str, *, bucket: str, key: str, expected: int | str, actual: int | str | None) -> None:
        self.bucket = bucket
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(f"{bucket}/{key}: {message} (expected length {expected}, found {actual})")


class RollOverRequired(SinkError):
    """Raised when the current object cannot take more appends and the writer
    has no ``next_key`` to roll to; the caller picks the next object."""

    def __init__(self, message: str, *, bucket: str, key: str) -> None:
        self.bucket = bucket
        self.key = key
        super().__init__(f"{bucket}/{key}: {message}")


class ObjectTooLarge(RollOverRequired):
    """Raised when the next append would take the object past the roll-over
    policy's ``max_bytes``."""


class TooManyAppends(RollOverRequired):
    """Raised when the roll-over policy's ``max_appends`` is reached or the
    server refused the append with ``TooManyParts`` (S3 Express: 10,000)."""


class AppendPending(SinkError):
    """Raised when ``append`` is called with a body of a different length
    while an earlier append's outcome is still unknown: the earlier data must
    be retried (or ``resume`` called) first, or bytes would be lost or doubled."""


class TransportError(SinkError):
    """Raised when no HTTP answer arrived: connect/read/write timeout,
    connection reset or refused. Always raised ``from`` the httpx exception.
    The request may or may not have been applied."""
