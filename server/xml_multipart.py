"""S3 XML of multipart uploads: the four results and the CompleteMultipartUpload request.

Pure.  Shapes from the S3 API reference (CreateMultipartUpload,
CompleteMultipartUpload, ListParts, ListMultipartUploads); built with the
shared helpers of ``server.xml``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from server.errors import InvalidArgument, MalformedXML
from server.timefmt import iso8601
from server.xml import add, add_owner, bool_text, element, encoder, parse_xml, serialize

STORAGE_CLASS = "STANDARD"


@dataclass(frozen=True)
class RequestedPart:
    """One ``<Part>`` of a CompleteMultipartUpload request."""

    number: int
    etag: str  # unquoted
    checksums: dict[str, str] = field(default_factory=dict)  # algorithm -> base64


@dataclass(frozen=True)
class PartRow:
    number: int
    last_modified: float
    etag: str
    size: int
    checksum: tuple[str, str] | None = None  # (XML element, value)


@dataclass(frozen=True)
class UploadRow:
    key: str
    upload_id: str
    initiated: float
    owner: tuple[str, str]  # (ID, DisplayName)
    checksum_algorithm: str | None = None  # as S3 spells it: CRC32
    checksum_type: str | None = None


def initiate_result(bucket: str, key: str, upload_id: str) -> bytes:
    root = element("InitiateMultipartUploadResult")
    add(root, "Bucket", bucket)
    add(root, "Key", key)
    add(root, "UploadId", upload_id)
    return serialize(root)


def complete_result(
    location: str, bucket: str, key: str, etag: str, checksum: tuple[str, str] | None, checksum_type: str | None
) -> bytes:
    root = element("CompleteMultipartUploadResult")
    add(root, "Location", location)
    add(root, "Bucket", bucket)
    add(root, "Key", key)
    add(root, "ETag", f'"{etag}"')
    if checksum is not None:
        add(root, *checksum)
    if checksum_type is not None:
        add(root, "ChecksumType", checksum_type)
    return serialize(root)


def list_parts_result(
    *, bucket: str, key: str, upload_id: str, marker: int, next_marker: int | None, max_parts: int,
    truncated: bool, parts: Iterable[PartRow], owner: tuple[str, str], checksum_algorithm: str | None,
    checksum_type: str | None,
) -> bytes:  # fmt: skip
    root = element("ListPartsResult")
    add(root, "Bucket", bucket)
    add(root, "Key", key)
    add(root, "UploadId", upload_id)
    _people(root, owner)
    add(root, "StorageClass", STORAGE_CLASS)
    add(root, "PartNumberMarker", marker)
    if next_marker is not None:
        add(root, "NextPartNumberMarker", next_marker)
    add(root, "MaxParts", max_parts)
    add(root, "IsTruncated", bool_text(truncated))
    if checksum_algorithm:
        add(root, "ChecksumAlgorithm", checksum_algorithm)
    if checksum_type:
        add(root, "ChecksumType", checksum_type)
    for part in parts:
        row = add(root, "Part")
        add(row, "PartNumber", part.number)
        add(row, "LastModified", iso8601(part.last_modified))
        add(row, "ETag", f'"{part.etag}"')
        add(row, "Size", part.size)
        if part.checksum is not None:
            add(row, *part.checksum)
    return serialize(root)


def list_uploads_result(
    *, bucket: str, prefix: str, delimiter: str, key_marker: str, upload_id_marker: str,
    next_key_marker: str | None, next_upload_id_marker: str | None, max_uploads: int, truncated: bool,
    encoding_type: str | None, uploads: Iterable[UploadRow], common_prefixes: Iterable[str],
) -> bytes:  # fmt: skip
    encode = encoder(encoding_type)
    root = element("ListMultipartUploadsResult")
    add(root, "Bucket", bucket)
    add(root, "KeyMarker", encode(key_marker))
    add(root, "UploadIdMarker", upload_id_marker)
    if next_key_marker is not None:
        add(root, "NextKeyMarker", encode(next_key_marker))
    if next_upload_id_marker is not None:
        add(root, "NextUploadIdMarker", next_upload_id_marker)
    if delimiter:
        add(root, "Delimiter", encode(delimiter))
    add(root, "Prefix", encode(prefix))
    if encoding_type:
        add(root, "EncodingType", encoding_type)
    add(root, "MaxUploads", max_uploads)
    add(root, "IsTruncated", bool_text(truncated))
    for upload in uploads:
        row = add(root, "Upload")
        add(row, "Key", encode(upload.key))
        add(row, "UploadId", upload.upload_id)
        _people(row, upload.owner)
        add(row, "StorageClass", STORAGE_CLASS)
        add(row, "Initiated", iso8601(upload.initiated))
        if upload.checksum_algorithm:
            add(row, "ChecksumAlgorithm", upload.checksum_algorithm)
        if upload.checksum_type:
            add(row, "ChecksumType", upload.checksum_type)
    for common in common_prefixes:
        add(add(root, "CommonPrefixes"), "Prefix", encode(common))
    return serialize(root)


def _people(parent, owner: tuple[str, str]) -> None:
    initiator = add(parent, "Initiator")
    add(initiator, "ID", owner[0])
    add(initiator, "DisplayName", owner[1])
    add_owner(parent, *owner)


def parse_complete_request(body: bytes) -> list[RequestedPart]:
    """The ``<Part>`` list of a CompleteMultipartUpload body, in request order."""
    root = parse_xml(body)
    if root.tag != "CompleteMultipartUpload":
        raise MalformedXML(f"expected <CompleteMultipartUpload>, got <{root.tag}>")
    parts = []
    for node in root:
        if node.tag != "Part":
            raise MalformedXML(f"unexpected <{node.tag}> in <CompleteMultipartUpload>")
        fields = {child.tag: (child.text or "").strip() for child in node}
        number, etag = fields.get("PartNumber"), fields.get("ETag")
        if number is None or etag is None:
            raise MalformedXML("each <Part> needs <PartNumber> and <ETag>")
        if not number.isascii() or not number.isdigit():
            raise InvalidArgument(f"Part number must be an integer, not {number!r}", ArgumentName="PartNumber")
        found = {name.removeprefix("Checksum").lower(): value for name, value in fields.items()
                 if name.startswith("Checksum") and name != "ChecksumType"}  # fmt: skip
        parts.append(RequestedPart(int(number), etag.strip('"'), found))
    if not parts:
        raise MalformedXML("<CompleteMultipartUpload> lists no parts")
    return parts
