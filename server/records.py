"""What storage hands out (buckets, objects, body digests) and the pure rules
that derive an object's next ETag and CRC32 from a write.

No I/O here: ``server.storage`` does the files and the index, these types and
rules are what the router sees and what the tests pin down.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass, field

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
class ObjectInfo:
    """The committed state of one object (what HEAD shows)."""

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


@dataclass(frozen=True)
class BodyDigest:
    """Size and checksums of one request's body, for the router's Content-MD5 / checksum checks."""

    size: int
    md5: bytes
    crc32: int


@dataclass(frozen=True)
class NewObject:
    """Metadata for a write that creates or replaces an object (ignored by appends to an existing one)."""

    content_type: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    system: dict[str, str] = field(default_factory=dict)


class BodyHasher:
    """Running digests of one request body, plus the object's CRC32 extended over it.

    ``extends_crc32`` is the CRC32 of the bytes the body is appended to, or None
    when the body makes a new object (then the object's CRC32 is the body's own
    and is not computed twice).
    """

    __slots__ = ("size", "_md5", "_crc32", "_object_crc32")

    def __init__(self, extends_crc32: int | None = None) -> None:
        self.size = 0
        self._md5 = hashlib.md5()
        self._crc32 = 0
        self._object_crc32 = extends_crc32

    def update(self, data: bytes) -> None:
        self.size += len(data)
        self._md5.update(data)
        self._crc32 = zlib.crc32(data, self._crc32)
        if self._object_crc32 is not None:
            self._object_crc32 = zlib.crc32(data, self._object_crc32)

    def digest(self) -> BodyDigest:
        return BodyDigest(size=self.size, md5=self._md5.digest(), crc32=self._crc32)

    @property
    def object_crc32(self) -> int:
        """CRC32 of the whole object once this body is part of it."""
        return self._crc32 if self._object_crc32 is None else self._object_crc32


def created_info(bucket: str, key: str, digest: BodyDigest, new: NewObject, now: float) -> ObjectInfo:
    """The object a plain PUT or a create-by-append makes: its ETag is the MD5 of the body."""
    return ObjectInfo(
        bucket=bucket,
        key=key,
        size=digest.size,
        etag=digest.md5.hex(),
        last_modified=now,
        content_type=new.content_type,
        metadata=dict(new.metadata),
        system=dict(new.system),
        crc32=digest.crc32,
        appends=1,
    )


def append_etag(previous_etag: str, body_md5: bytes, appends: int) -> str:
    """The ETag after an append: it changes with every append and looks like a
    multipart ETag ("<hex>-<n>"), so no client mistakes it for the content's MD5.

    ``appends`` is the object's total write count after this append.
    """
    previous_part = bytes.fromhex(previous_etag.split("-", 1)[0])
    return f"{hashlib.md5(previous_part + body_md5).hexdigest()}-{appends}"


def appended_info(current: ObjectInfo, digest: BodyDigest, body_crc32_running: int, now: float) -> ObjectInfo:
    """The object after a non-empty append of a body with ``digest``.

    ``body_crc32_running`` is ``zlib.crc32(body, current.crc32)``: the full-object
    CRC32 extended over the body.
    """
    appends = current.appends + 1
    return ObjectInfo(  # not dataclasses.replace: this is on every append's path, and 5x cheaper
        bucket=current.bucket,
        key=current.key,
        size=current.size + digest.size,
        etag=append_etag(current.etag, digest.md5, appends),
        last_modified=now,
        content_type=current.content_type,
        metadata=current.metadata,
        system=current.system,
        crc32=body_crc32_running,
        appends=appends,
    )
