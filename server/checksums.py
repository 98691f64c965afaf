"""The checksum algorithms S3 clients send (``x-amz-checksum-*``).

CRC32C/CRC64NVME come from awscrt (AWS's C runtime, what botocore itself
uses, with an incremental ``previous`` argument); CRC32 from ISA-L
(``sink.crc``: ~8x ``zlib.crc32`` here, where awscrt's CRC32 is slower than
zlib's); SHA-1/SHA-256 from hashlib.  Values travel as
base64 of the big-endian digest, as S3 prints them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Callable, Protocol

from awscrt import checksums as _crt

from server.errors import InvalidRequest
from sink import crc


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    """An incremental CRC over awscrt's ``fn(data, previous)``."""

    __slots__ = ("_fn", "_value", "_width")

    def __init__(self, fn: Callable[[bytes, int], int], width: int, value: int = 0) -> None:
        self._fn, self._width, self._value = fn, width, value

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = self._fn(data, self._value)

    @property
    def value(self) -> int:
        return self._value

    def digest(self) -> bytes:
        return self._value.to_bytes(self._width, "big")


def crc32(data: bytes | memoryview, previous: int = 0) -> int:
    """CRC32 (the zlib polynomial); ``previous`` extends a running value."""
    return crc.crc32(data, previous)


def crc32_combine(first: int, second: int, second_length: int) -> int:
    """CRC32 of A||B from CRC32(A), CRC32(B) and len(B), without reading the bytes."""
    return _crt.combine_crc32(first, second, second_length)


FACTORIES: dict[str, Callable[[], Hasher]] = {
    "crc32": lambda: _Crc(crc.crc32, 4),
    "crc32c": lambda: _Crc(_crt.crc32c, 4),
    "crc64nvme": lambda: _Crc(_crt.crc64nvme, 8),
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}
_CRCS: dict[str, tuple[Callable[[bytes, int], int], int]] = {
    "crc32": (crc.crc32, 4),
    "crc32c": (_crt.crc32c, 4),
    "crc64nvme": (_crt.crc64nvme, 8),
}


def resume(algorithm: str, digest: bytes) -> Hasher:
    """A CRC hasher that continues from ``digest`` (the CRC of the bytes so far):
    how a full-object CRC is extended over an append."""
    fn, width = _CRCS[algorithm]
    return _Crc(fn, width, int.from_bytes(digest, "big"))


_COMBINE = {"crc32": _crt.combine_crc32, "crc32c": _crt.combine_crc32c, "crc64nvme": _crt.combine_crc64nvme}


def combine(algorithm: str, first: bytes, second: bytes, second_length: int) -> bytes:
    """The CRC of A||B from CRC(A), CRC(B) and len(B), without reading the bytes:
    how a multipart upload's FULL_OBJECT checksum comes from its parts'."""
    width = _CRCS[algorithm][1]
    value = _COMBINE[algorithm](int.from_bytes(first, "big"), int.from_bytes(second, "big"), second_length)
    return value.to_bytes(width, "big")


HEADER_PREFIX = "x-amz-checksum-"
DIGEST_SIZES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}


def header_name(algorithm: str) -> str:
    return HEADER_PREFIX + algorithm


def encode(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def decode(algorithm: str, value: str) -> bytes:
    """The digest a client sent, or InvalidRequest if it cannot be one."""
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != DIGEST_SIZES[algorithm]:
        raise InvalidRequest(f"Value for {header_name(algorithm)} header is invalid.")
    return digest


def crc32_value(crc: int) -> str:
    """The header value of a full-object CRC32 kept as an int."""
    return encode(crc.to_bytes(4, "big"))
