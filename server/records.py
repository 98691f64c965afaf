"""What storage hands out (buckets, objects, body digests) and the pure rules
that derive an object's next ETag and CRC32 from a write.

No I/O here: ``server.storage`` does the files and the index, these types and
rules are what the router sees and what the tests pin down.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from server import checksums

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# S3's largest single PUT; one request body may not pass it.
MAX_BODY_SIZE = 5 * GiB


@dataclass(frozen=True)
class BucketInfo:
    name: str
    created: float


@dataclass(frozen=True)
class StoredChecksum:
    """An object's checksum other than its plain full-object CRC32 (which is always kept).

    ``type`` FULL_OBJECT: ``value`` covers all bytes (CRC32C/CRC64NVME are extended
    by appends; SHA-1/SHA-256 cannot be, so an append drops them).  COMPOSITE
    (multipart): ``value`` is ``<base64>-<parts>``, a checksum of the parts'
    checksums, dropped by an append.
    """

    algorithm: str  # crc32, crc32c, crc64nvme, sha1, sha256
    value: str  # base64 of the digest, as S3 prints it
    type: str = "FULL_OBJECT"

    def encode(self) -> str:
        return f"{self.algorithm} {self.type} {self.value}"

    @classmethod
    def decode(cls, text: str | None) -> StoredChecksum | None:
        if not text:
            return None
        algorithm, type_, value = text.split(" ", 2)
        return cls(algorithm, value, type_)

    @property
    def extensible(self) -> bool:
        """Whether an append can carry it forward (a CRC of the whole object)."""
        return self.type == "FULL_OBJECT" and self.algorithm in EXTENSIBLE

    def running(self) -> checksums.Hasher:
        """A hasher that continues this full-object CRC over appended bytes."""
        return checksums.resume(self.algorithm, base64.b64decode(self.value))


EXTENSIBLE = frozenset({"crc32", "crc32c", "crc64nvme"})


@dataclass(slots=True)
class ObjectInfo:
    """The committed state of one object (what HEAD shows).

    Treated as immutable (a new one per write: the slot cache and responses share
    them), but not frozen: a frozen dataclass sets each of its 11 fields through
    ``object.__setattr__``, three times the cost of building one, on every append."""

    bucket: str
    key: str
    size: int
    etag: str  # unquoted; the router adds the quotes
    last_modified: float
    content_type: str | None
    metadata: dict[str, str]  # user metadata, names without "x-amz-meta-"
    system: dict[str, str]  # other stored headers, e.g. {"x-amz-server-side-encryption": "AES256"}
    crc32: int  # full-object CRC32 (zlib.crc32 of all bytes)
    appends: int  # writes that made the object: 1 after a PUT or a create-by-append
    checksum: StoredChecksum | None = None  # None: the full-object CRC32 above is the checksum


@dataclass(slots=True)
class BodyDigest:
    """Size and checksums of one request's body, for the router's Content-MD5 /
    checksum checks and the object's next ETag.  ``md5`` is None when nobody
    needs it (an append whose request has no Content-MD5): at ~600 MB/s here,
    MD5 was the slowest thing a large append did."""

    size: int
    md5: bytes | None
    crc32: int
    # Not frozen (as ObjectInfo): one is made per request body; nobody changes one.


@dataclass(frozen=True)
class NewObject:
    """Metadata for a write that creates or replaces an object (ignored by appends to an existing one)."""

    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    system: dict[str, str] = field(default_factory=dict)
    # The full-object checksum to keep besides CRC32 (computed from the body), or a
    # ready one (``checksum``: a multipart upload's COMPOSITE value), and an ETag
    # that is not the body's MD5 (multipart: "<md5 of part md5s>-<parts>").
    checksum_algorithm: str | None = None
    checksum: StoredChecksum | None = None
    etag: str | None = None


class BodyHasher:
    """Running digests of one request body, plus the object's CRC32 extended over it.

    ``extends_crc32`` is the CRC32 of the bytes the body is appended to, or None
    when the body makes a new object.  The object's CRC32 is combined from it and
    the body's own (``crc32_combine``), so the bytes are read once for CRC32.
    ``md5``: compute the body's MD5 (a new object's ETag, a Content-MD5 check).
    """

    __slots__ = ("size", "_md5", "_crc32", "_extends_crc32", "extra", "also", "_digest")

    def __init__(
        self, extends_crc32: int | None = None, extra: checksums.Hasher | None = None, *, md5: bool = True
    ) -> None:
        self.size = 0
        self._md5 = hashlib.md5() if md5 else None
        self._crc32 = 0
        self._extends_crc32 = extends_crc32
        self.extra = extra  # another full-object checksum kept alongside (CRC32C, CRC64NVME, SHA-*)
        self.also: Callable[[bytes], None] | None = None  # the request's own hashing (Payload.hash_elsewhere)
        self._digest: BodyDigest | None = None  # once asked for (the body check, then the commit)

    @property
    def computes_md5(self) -> bool:
        return self._md5 is not None

    def update(self, data: bytes) -> None:
        self.update_md5(data)
        self.update_others(data)

    # The two halves of ``update``, which touch disjoint state: a large body's
    # pieces run them in two threads at once (MD5 alone is as slow as the rest).
    def update_md5(self, data: bytes) -> None:
        if self._md5 is not None:
            self._digest = None
            self._md5.update(data)

    def update_others(self, data: bytes) -> None:
        self._digest = None
        self.size += len(data)
        self._crc32 = checksums.crc32(data, self._crc32)
        if self.extra is not None:
            self.extra.update(data)
        if self.also is not None:
            self.also(data)

    def digest(self) -> BodyDigest:
        if self._digest is None:
            md5 = self._md5.digest() if self._md5 is not None else None
            self._digest = BodyDigest(size=self.size, md5=md5, crc32=self._crc32)
        return self._digest

    @classmethod
    def for_new(cls, new: NewObject) -> BodyHasher:
        """The hasher of a body that makes a new object (``new`` says which checksum to keep)."""
        algorithm = new.checksum_algorithm if new.checksum is None else None
        return cls(extra=checksums.FACTORIES[algorithm]() if algorithm not in (None, "crc32") else None)

    @classmethod
    def for_append(cls, current: ObjectInfo, *, md5: bool = False) -> BodyHasher:
        """The hasher of an append to ``current``: its CRC32 and any other CRC
        extended; the body's MD5 only if asked for (a Content-MD5 to check)."""
        keep = current.checksum is not None and current.checksum.extensible
        return cls(extends_crc32=current.crc32, extra=current.checksum.running() if keep else None, md5=md5)

    def object_checksum(self, kept: StoredChecksum | None) -> StoredChecksum | None:
        """The object's checksum after this body: ``kept``'s algorithm carried on by
        ``extra``, or None (the CRC32 alone) when it could not be."""
        if kept is None or self.extra is None:
            return None
        return StoredChecksum(kept.algorithm, checksums.encode(self.extra.digest()))

    @property
    def object_crc32(self) -> int:
        """CRC32 of the whole object once this body is part of it."""
        if self._extends_crc32 is None:
            return self._crc32
        return checksums.crc32_combine(self._extends_crc32, self._crc32, self.size)


def created_info(
    bucket: str, key: str, digest: BodyDigest, new: NewObject, now: float, extra: checksums.Hasher | None = None
) -> ObjectInfo:
    """The object a plain PUT or a create-by-append makes: its ETag is the MD5 of the
    body (unless ``new`` brings one); ``extra`` is ``BodyHasher.for_new(new).extra``."""
    checksum = new.checksum
    if checksum is None and extra is not None and new.checksum_algorithm is not None:
        checksum = StoredChecksum(new.checksum_algorithm, checksums.encode(extra.digest()))
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=digest.size,
        etag=new.etag or digest.md5.hex(),
        last_modified=now,
        content_type=new.content_type,
        metadata=dict(new.metadata),
        system=dict(new.system),
        crc32=digest.crc32,
        appends=1,
        checksum=checksum,
    )


def append_etag(previous_etag: str, body: BodyDigest, appends: int) -> str:
    """The ETag after an append: it changes with every append and looks like a
    multipart ETag ("<hex>-<n>"), so no client mistakes it for the content's MD5.
    It chains the previous ETag with the body's size and CRC32 (S3 Express ETags
    are not MD5s either), so the body's MD5 is not needed: within one object's
    history the "-<n>" already tells appends apart, and a new object starts its
    chain from its first body's MD5.

    ``appends`` is the object's total write count after this append.
    """
    previous_part = bytes.fromhex(previous_etag.partition("-")[0])
    body_id = body.size.to_bytes(8, "big") + body.crc32.to_bytes(4, "big")
    return f"{hashlib.md5(previous_part + body_id).hexdigest()}-{appends}"


def appended_info(
    current: ObjectInfo, digest: BodyDigest, body_crc32_running: int, now: float,
    checksum: StoredChecksum | None = None,
) -> ObjectInfo:  # fmt: skip
    """The object after a non-empty append of a body with ``digest``.

    ``body_crc32_running`` is ``zlib.crc32(body, current.crc32)``: the full-object
    CRC32 extended over the body; ``checksum`` the object's other checksum carried
    on (``BodyHasher.object_checksum``), None when it is dropped.
    """
    appends = current.appends + 1
    return ObjectInfo(  # positional, not dataclasses.replace: this is on every append's path
        current.bucket, current.key, current.size + digest.size, append_etag(current.etag, digest, appends), now,
        current.content_type, current.metadata, current.system, body_crc32_running, appends, checksum,
    )
