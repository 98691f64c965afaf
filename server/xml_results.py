"""S3 XML results of ListObjectVersions, CopyObject/UploadPartCopy and DeleteObjects.

Pure; built with the shared helpers of ``server.xml`` (escaping, CR handling,
``encoding-type=url``), shapes from the S3 API reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from server.timefmt import iso8601
from server.xml import add as _add
from server.xml import add_owner as _owner
from server.xml import bool_text as _bool
from server.xml import element as _root
from server.xml import encoder as _encoder
from server.xml import serialize as _serialize


@dataclass(frozen=True)
class VersionEntry:
    """One ``<Version>`` of ListObjectVersions: on an unversioned bucket, each object once, as ``null``."""

    key: str
    last_modified: float
    etag: str
    size: int
    version_id: str = "null"
    is_latest: bool = True


def list_object_versions(
    *,
    bucket: str,
    prefix: str,
    delimiter: str | None,
    max_keys: int,
    key_marker: str,
    version_id_marker: str,
    next_key_marker: str | None,
    next_version_id_marker: str | None,
    is_truncated: bool,
    encoding_type: str | None,
    versions: Iterable[VersionEntry],
    common_prefixes: Iterable[str],
    owner: tuple[str, str],
) -> bytes:
    """ListVersionsResult for ``GET /bucket?versions``."""
    encode = _encoder(encoding_type)
    root = _root("ListVersionsResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", encode(prefix))
    _add(root, "KeyMarker", encode(key_marker))
    _add(root, "VersionIdMarker", version_id_marker)
    if next_key_marker is not None:
        _add(root, "NextKeyMarker", encode(next_key_marker))
    if next_version_id_marker is not None:
        _add(root, "NextVersionIdMarker", next_version_id_marker)
    _add(root, "MaxKeys", max_keys)
    if delimiter:
        _add(root, "Delimiter", encode(delimiter))
    if encoding_type:
        _add(root, "EncodingType", encoding_type)
    _add(root, "IsTruncated", _bool(is_truncated))
    for entry in versions:
        row = _add(root, "Version")
        _add(row, "Key", encode(entry.key))
        _add(row, "VersionId", entry.version_id)
        _add(row, "IsLatest", _bool(entry.is_latest))
        _add(row, "LastModified", iso8601(entry.last_modified))
        _add(row, "ETag", f'"{entry.etag}"')
        _add(row, "Size", entry.size)
        _owner(row, *owner)
        _add(row, "StorageClass", "STANDARD")
    for common in common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", encode(common))
    return _serialize(root)


def copy_result(tag: str, etag: str, last_modified: float, checksums: Mapping[str, str] | None = None) -> bytes:
    """CopyObjectResult (CopyObject) or CopyPartResult (UploadPartCopy); ``checksums`` maps
    element names (``ChecksumCRC32C``) to values."""
    root = _root(tag)
    _add(root, "ETag", f'"{etag}"')
    _add(root, "LastModified", iso8601(last_modified))
    for name, value in (checksums or {}).items():
        _add(root, name, value)
    return _serialize(root)


def delete_result(
    deleted: Iterable[tuple[str, str | None]], errors: Iterable[tuple[str, str | None, str, str]]
) -> bytes:
    """DeleteResult of DeleteObjects: ``(key, version id)`` deleted, ``(key, version id, code, message)`` errors."""
    root = _root("DeleteResult")
    for key, version_id in deleted:
        row = _add(root, "Deleted")
        _add(row, "Key", key)
        if version_id is not None:
            _add(row, "VersionId", version_id)
    for key, version_id, code, message in errors:
        error = _add(root, "Error")
        _add(error, "Key", key)
        if version_id is not None:
            _add(error, "VersionId", version_id)
        _add(error, "Code", code)
        _add(error, "Message", message)
    return _serialize(root)
