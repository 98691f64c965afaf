"""Which full-object checksum a write asks for, and the headers that report it.

Pure.  A client names its checksum algorithm by sending the value
(``x-amz-checksum-crc32c: ...``), announcing a trailer
(``x-amz-trailer: x-amz-checksum-crc64nvme``) or naming it alone
(``x-amz-checksum-algorithm`` on CreateMultipartUpload and CopyObject,
``x-amz-sdk-checksum-algorithm`` from the SDKs).  The object keeps that
algorithm's full-object checksum (``server.records.StoredChecksum``); CRC32,
the default, is kept for every object anyway.

With ``x-amz-checksum-mode: ENABLED`` GET and HEAD report the checksum and its
``x-amz-checksum-type`` (FULL_OBJECT, or COMPOSITE for a multipart upload's
checksum of part checksums), as the S3 API reference for GetObject describes.
"""

from __future__ import annotations

from collections.abc import Callable

from server import checksums
from server.errors import InvalidRequest
from server.records import ObjectInfo

ALGORITHM_HEADERS = ("x-amz-checksum-algorithm", "x-amz-sdk-checksum-algorithm")
NOT_CHECKSUMS = frozenset({"x-amz-checksum-algorithm", "x-amz-checksum-type", "x-amz-checksum-mode"})


def parse_algorithm(value: str) -> str:
    """An algorithm name as S3 spells it (``CRC64NVME``) → ours (``crc64nvme``); InvalidRequest if unknown."""
    algorithm = value.strip().lower()
    if algorithm not in checksums.FACTORIES:
        raise InvalidRequest(f"Checksum algorithm {value!r} is not supported.", ArgumentName="x-amz-checksum-algorithm")
    return algorithm


def requested_algorithm(headers: list[tuple[str, str]]) -> str | None:
    """The checksum algorithm a request names, or None."""
    for name, value in headers:
        if name.startswith(checksums.HEADER_PREFIX) and name not in NOT_CHECKSUMS:
            return parse_algorithm(name.removeprefix(checksums.HEADER_PREFIX))
    for name, value in headers:
        if name == "x-amz-trailer" and value.strip().lower().startswith(checksums.HEADER_PREFIX):
            return parse_algorithm(value.strip().lower().removeprefix(checksums.HEADER_PREFIX))
    for name, value in headers:
        if name in ALGORITHM_HEADERS:
            return parse_algorithm(value)
    return None


def wants_checksum(header: Callable[[str], str | None]) -> bool:
    return (header("x-amz-checksum-mode") or "").upper() == "ENABLED"


def object_checksum(info: ObjectInfo) -> tuple[str, str, str]:
    """(algorithm, value, type) of the checksum an object reports."""
    if info.checksum is not None:
        return info.checksum.algorithm, info.checksum.value, info.checksum.type
    return "crc32", checksums.crc32_value(info.crc32), "FULL_OBJECT"


def checksum_response_headers(info: ObjectInfo) -> list[tuple[str, str]]:
    """``x-amz-checksum-<algorithm>`` and ``x-amz-checksum-type`` for GET/HEAD."""
    algorithm, value, type_ = object_checksum(info)
    return [(checksums.header_name(algorithm), value), ("x-amz-checksum-type", type_)]


def xml_name(algorithm: str) -> str:
    """The XML element of a checksum (``ChecksumCRC64NVME``)."""
    return "Checksum" + algorithm.upper()
