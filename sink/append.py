"""One object's writer: knows the remote length, appends exactly once.

The rules (/work/shared/APPEND.md, "What a client does"; DESIGN.md, "Exactly
once, end to end"):

* ``open`` HEADs the object; its length is the next offset (missing → 0).
* ``append`` sends the body at that offset. On 200 the offset moves by the
  body length, cross-checked against ``x-amz-object-size``.
* On an offset mismatch, a timeout, a reset or a 5xx the writer HEADs and
  reconciles: length == offset + body → it landed, done, no resend;
  length == offset → it did not, send again (per the retry policy);
  anything else → ``ConflictError``. Never overwrite, never skip.
* If the retry budget runs out with the outcome unknown, the body stays
  *pending*: the next ``append`` must carry the same data and reconciles
  first. ``resume`` does the same for an intent recorded before a restart.
* Roll-over: when the policy says the object is full (bytes, appends, age),
  or the server says ``TooManyParts``, the writer moves to ``next_key(n)``.

The writer holds only the one body it is sending; it is not re-entrant.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import structlog
import trio

from . import protocol
from .append_batch import BatchItem, ItemResult
from .client import AppendAck, ObjectState, S3Client
from .compress import Codec, Identity
from .errors import (
    AppendPending,
    ConfigError,
    ConflictError,
    NotFoundError,
    ObjectTooLarge,
    OffsetMismatchError,
    RollOverRequired,
    TooManyAppends,
)
from .retry import RandomSource, RetryPolicy, call_with_retry, is_retriable

log = structlog.get_logger()

S3EXPRESS_MAX_APPENDS = 10_000  # S3 Express refuses more appends to one object (TooManyParts)
_ROLL_ERRORS: dict[str, type[RollOverRequired]] = {
    "max_bytes": ObjectTooLarge,
    "max_appends": TooManyAppends,
    "server_too_many_parts": TooManyAppends,
}


@dataclass(frozen=True)
class RollOverPolicy:
    """When an object is full. ``None`` means no limit; ``max_age`` is in
    seconds since the writer started the object."""

    max_bytes: int | None = None
    max_appends: int | None = None
    max_age: float | None = None

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_appends", "max_age"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"roll-over {name} must be positive, got {value}")

    def for_s3express(self) -> RollOverPolicy:
        """This policy with the S3 Express append limit filled in if unset."""
        return self if self.max_appends is not None else replace(self, max_appends=S3EXPRESS_MAX_APPENDS)


class Reconciled(enum.Enum):
    """The verdict on an append whose answer was not seen."""

    LANDED = "landed"
    NOT_LANDED = "not_landed"


@dataclass(frozen=True)
class Intent:
    """"Append ``length`` bytes at ``offset`` of ``bucket/key``", announced
    before the first send so a caller can record it durably."""

    bucket: str
    key: str
    offset: int
    length: int


class ObjectWriter:
    """Appends to ``bucket/key`` (and its roll-over successors) exactly once."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        retry: RetryPolicy | None = None,
        roll: RollOverPolicy | None = None,
        next_key: Callable[[int], str] | None = None,
        index: int = 0,
        s3express: bool = False,
        codec: Codec | None = None,
        checksum: bool = True,
        on_intent: Callable[[Intent], Awaitable[None]] | None = None,
        rand: RandomSource | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.key = key
        self.index = index
        self.retry = retry or RetryPolicy()
        roll = roll or RollOverPolicy()
        self.roll = roll.for_s3express() if s3express else roll
        self.next_key = next_key
        self.codec: Codec = codec or Identity()
        self.checksum = checksum
        self.on_intent = on_intent
        self.rand = rand
        self.offset: int | None = None  # the remote length, once known
        self.appends = 0  # appends by this writer to the current object
        self.pending: int | None = None  # length of a body whose outcome is unknown
        self._started_at = 0.0
        self._conflict: ConflictError | None = None
        self._busy = False

    def __repr__(self) -> str:
        return (
            f"<ObjectWriter {self.bucket}/{self.key} index={self.index} offset={self.offset} "
            f"appends={self.appends} pending={self.pending} failed={self._conflict is not None}>"
        )

    # -- public ---------------------------------------------------------------

    async def open(self) -> int:
        """HEAD the object and take its length as the next offset."""
        with self._exclusive():
            return await self._open()

    async def _open(self) -> int:
        state = await self._head(self.key)
        self._start_object(0 if state is None else state.size)
        log.info("object_opened", bucket=self.bucket, key=self.key, length=self.offset)
        return self.offset  # type: ignore[return-value]

    async def append(self, data: bytes, *, crc32: int | None = None) -> int:
        """Append ``data`` (encoded by the codec) and return the new remote length.

        ``crc32``: ``data``'s CRC32, when the caller computed it off the event
        loop (beside reading it); only with the identity codec, whose body is
        ``data`` itself.  The whole body goes to one object (a roll-over moves
        it, never splits it), so the value holds for every attempt."""
        with self._exclusive():
            if crc32 is not None and not isinstance(self.codec, Identity):
                raise ValueError(f"a precomputed CRC32 needs the identity codec, not {self.codec.name}")
            body = self.codec.encode(data)
            if self.offset is None:
                await self._open()
            if self.pending is not None:
                if len(body) != self.pending:
                    raise AppendPending(
                        f"{self.bucket}/{self.key}: an append of {self.pending} bytes at {self.offset} is unresolved; "
                        f"retry that same data (got {len(body)} bytes) or call resume()"
                    )
                if await self._reconcile(len(body)) is Reconciled.LANDED:
                    return self._length
            if not body:
                return self._length
            if reason := self._roll_due(len(body)):
                await self._roll(reason)
            return await self._send(body, crc32)

    async def resume(self, expected_length: int, pending: int | None) -> Reconciled:
        """Decide a recorded intent after a restart: the object should be
        ``expected_length`` long, or ``expected_length + pending`` if the
        append in flight landed. Anything else raises ConflictError."""
        with self._exclusive():
            self._start_object(expected_length)
            self.pending = pending or None
            if self.pending is None:
                state = await self._head(self.key)
                actual = 0 if state is None else state.size
                if actual != expected_length:
                    raise self._fail("object length changed while we were away", expected_length, actual)
                return Reconciled.NOT_LANDED
            return await self._reconcile(self.pending)

    # -- sending --------------------------------------------------------------

    async def _send(self, body: bytes, crc32: int | None = None) -> int:
        """Send ``body`` at the known offset until it has landed exactly once."""
        size = len(body)
        await self._announce(size)
        backoff = self.retry.start(trio.current_time(), self.rand)
        ambiguous = False  # has an attempt of this body gone unanswered (so it may have landed)?
        while True:
            self.pending = size
            try:
                ack = await self.client.append(self.bucket, self.key, self._length, body, checksum=self.checksum,
                                               crc32=crc32)
            except TooManyAppends:
                self.pending = None  # refused before writing: nothing landed
                if self._length == 0 and self.appends == 0:
                    raise  # even a fresh object refuses: rolling again would loop forever
                await self._roll("server_too_many_parts")
                await self._announce(size)
                continue
            except (OffsetMismatchError, NotFoundError) as exc:
                if exc.code == "NoSuchBucket":
                    self.pending = None
                    raise
                if not ambiguous:
                    await self._refused_at_offset(exc)  # raises: our body cannot be there
                if await self._reconcile(size) is Reconciled.LANDED:
                    return self._length
                if exc.code == "InvalidArgument":
                    raise  # the offset was right, so the refusal was about something else
                error: Exception = exc
            except Exception as exc:
                if not is_retriable(exc):
                    self.pending = None  # a definite refusal: nothing was written
                    raise
                error, ambiguous = exc, True
            else:
                return self._accept(ack, size)
            delay = backoff.next_delay(trio.current_time())
            if delay is None:
                log.warning("append_gave_up", bucket=self.bucket, key=self.key, offset=self.offset, pending=self.pending, error=str(error))
                raise error
            log.info("append_retry", bucket=self.bucket, key=self.key, offset=self.offset, delay=round(delay, 3), error=str(error))
            await trio.sleep(delay)
            # After no answer or a 5xx the body may have landed: look before sending it again.
            if ambiguous:
                if await self._reconcile(size) is Reconciled.LANDED:
                    return self._length
                ambiguous = False

    # -- one item of a many-object request (sink.append_batch) ----------------

    def batch_item(self, body: bytes) -> BatchItem | None:
        """``body`` as an item of an AppendObjects request, if this writer can send it as plainly as
        that: its length known, nothing unresolved, no roll-over due, the identity codec.

        The body is pending from now on: ``batch_landed`` takes a 200 result;
        for anything else ``batch_failed`` and then ``append`` of the same body
        settles it as after any PUT: a body that may have landed is looked for
        (HEAD) before it is sent again."""
        if (self._conflict is not None or self._busy or self.offset is None or self.pending is not None or not body
                or not isinstance(self.codec, Identity) or self._roll_due(len(body))):
            return None
        self.pending = len(body)
        crc32 = protocol.checksum_headers(body, "crc32")["x-amz-checksum-crc32"] if self.checksum else None
        return BatchItem(self.key, self.offset, body, crc32)

    def batch_landed(self, result: ItemResult) -> int:
        """The pending item's 200 result: the new remote length (a size other than ours is a conflict)."""
        assert self.pending is not None and result.ok and result.size is not None
        return self._accept(AppendAck(result.size, result.etag, result.size), self.pending)

    def batch_failed(self, result: ItemResult | None) -> None:
        """The pending item was refused (``result``, a 4xx: nothing was written) or its fate is unknown
        (``None``: no answer, or a 5xx)."""
        if result is not None and result.status < 500:
            self.pending = None

    async def _refused_at_offset(self, exc: Exception) -> None:
        """Every attempt of this body was answered, so none landed: a length other than
        ours means another writer (a length-only reconcile would mistake a foreign
        append of the same size for ours)."""
        self.pending = None
        state = await self._head(self.key)
        actual = 0 if state is None else state.size
        if actual == self._length:
            raise exc  # the offset was right: the refusal was about something else
        raise self._fail("another writer touched the object, or it was replaced", self._length, actual)

    def _accept(self, ack: AppendAck, size: int) -> int:
        expected = self._length + size
        if ack.reported_size is not None and ack.reported_size != expected:
            raise self._fail("server reports an unexpected size after our append", expected, ack.reported_size)
        self.offset = expected
        self.appends += 1
        self.pending = None
        return expected

    async def _reconcile(self, size: int) -> Reconciled:
        """HEAD and decide whether the pending ``size`` bytes landed."""
        state = await self._head(self.key)
        actual = 0 if state is None else state.size
        before = self._length
        if actual == before + size:
            self.offset, self.pending = actual, None
            self.appends += 1
            log.info("append_reconciled", bucket=self.bucket, key=self.key, verdict="landed", length=actual)
            return Reconciled.LANDED
        if actual == before:
            self.pending = None
            log.info("append_reconciled", bucket=self.bucket, key=self.key, verdict="not_landed", length=actual)
            return Reconciled.NOT_LANDED
        raise self._fail("another writer touched the object, or it was replaced", f"{before} or {before + size}", actual)

    # -- roll-over ------------------------------------------------------------

    def _roll_due(self, size: int) -> str | None:
        """Why the current object cannot take ``size`` more bytes, if so."""
        if self._length == 0 and self.appends == 0:
            return None  # an empty object always takes the first body
        p = self.roll
        if p.max_appends is not None and self.appends >= p.max_appends:
            return "max_appends"
        if p.max_bytes is not None and self._length + size > p.max_bytes:
            return "max_bytes"
        if p.max_age is not None and trio.current_time() - self._started_at >= p.max_age:
            return "max_age"
        return None

    async def _roll(self, reason: str) -> None:
        """Move to ``next_key(index + 1)``, which must be absent or empty."""
        if self.next_key is None:
            cls = _ROLL_ERRORS.get(reason, RollOverRequired)
            raise cls(f"object is full ({reason}) and no next_key was given", bucket=self.bucket, key=self.key)
        new_key = self.next_key(self.index + 1)
        state = await self._head(new_key)
        if state is not None and state.size > 0:
            raise self._fail(f"roll-over target {new_key!r} already holds data", 0, state.size)
        log.info("object_rolled", bucket=self.bucket, old_key=self.key, new_key=new_key, reason=reason, length=self.offset)
        self.key, self.index = new_key, self.index + 1
        self._start_object(0)

    # -- helpers --------------------------------------------------------------

    @property
    def _length(self) -> int:
        assert self.offset is not None, "open() first"
        return self.offset

    def _start_object(self, length: int) -> None:
        self.offset, self.appends, self.pending = length, 0, None
        self._started_at = trio.current_time()

    async def _head(self, key: str) -> ObjectState | None:
        if self._conflict is not None:
            raise self._conflict
        return await call_with_retry(lambda: self.client.head_object(self.bucket, key), self.retry, rand=self.rand, what="head")

    async def _announce(self, size: int) -> None:
        if self.on_intent is not None:
            await self.on_intent(Intent(self.bucket, self.key, self._length, size))

    def _fail(self, message: str, expected: int | str, actual: int | None) -> ConflictError:
        self._conflict = ConflictError(message, bucket=self.bucket, key=self.key, expected=expected, actual=actual)
        log.error("object_conflict", bucket=self.bucket, key=self.key, expected=expected, actual=actual, reason=message)
        return self._conflict

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Refuse concurrent use (as trio's streams do) rather than interleave appends."""
        if self._conflict is not None:
            raise self._conflict
        if self._busy:
            raise trio.BusyResourceError(f"{self.bucket}/{self.key}: another task is using this writer")
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
