"""S3 XML: response bodies built with ElementTree, request bodies parsed safely.

Pure (no I/O, no trio).  Responses carry the S3 namespace
``http://s3.amazonaws.com/doc/2006-03-01/`` except error bodies, which AWS
sends without one.  ElementTree does the escaping; two S3 details it does not
cover are handled here:

- a carriage return in text would be normalised to LF by every XML parser, so
  it is written as ``&#13;`` (keys may contain CR);
- ``encoding-type=url`` URL-encodes key-like elements (ListObjectsV2: Key,
  Prefix, Delimiter, StartAfter, CommonPrefixes/Prefix; ListObjects: also
  Marker and NextMarker), per the ListObjects/ListObjectsV2 API reference.
  Keys holding characters XML 1.0 cannot carry at all (U+0001 ...) are only
  listable that way, as on AWS.

Request bodies go through ``parse_xml``, which refuses any DOCTYPE (and with it
every entity trick: billion laughs, external entities) before it is expanded.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote
from xml.parsers import expat

from server.errors import MalformedXML
from server.timefmt import http_date as http_date  # re-exported: objects.py formats Last-Modified
from server.timefmt import iso8601

S3_NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
MAX_REQUEST_XML = 4 * 1024 * 1024  # 10,000 CompleteMultipartUpload parts fit comfortably


@dataclass(frozen=True)
class ObjectEntry:
    """One ``<Contents>`` row of a listing. ``etag`` is unquoted; the XML quotes it."""

    key: str
    last_modified: float  # POSIX seconds
    etag: str
    size: int
    storage_class: str = "STANDARD"


# -- building ------------------------------------------------------------------


def _root(tag: str, *, namespaced: bool = True) -> ET.Element:
    return ET.Element(tag, {"xmlns": S3_NAMESPACE} if namespaced else {})


def _add(parent: ET.Element, tag: str, text: str | int | None = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _serialize(root: ET.Element) -> bytes:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=False, short_empty_elements=False)
    # The only CRs in the output are from text (attributes get &#13; from ElementTree).
    return XML_DECLARATION + body.replace(b"\r", b"&#13;")


def _encoder(encoding_type: str | None):
    if encoding_type == "url":
        # S3 encodes like a form (space as '+'); botocore decodes with unquote_plus,
        # so %20 for a space and %2B for '+' decode the same and also survive a
        # plain unquote.
        return lambda value: quote(value, safe="/")
    return lambda value: value


def error_body(
    code: str,
    message: str,
    *,
    resource: str | None = None,
    request_id: str,
    host_id: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> bytes:
    """``<Error>`` (no namespace, as AWS sends it) with extras such as BucketName, Key."""
    root = _root("Error", namespaced=False)
    _add(root, "Code", code)
    _add(root, "Message", message)
    for name, value in (extra or {}).items():
        _add(root, name, value)
    if resource is not None:
        _add(root, "Resource", resource)
    _add(root, "RequestId", request_id)
    if host_id is not None:
        _add(root, "HostId", host_id)
    return _serialize(root)


def _owner(parent: ET.Element, owner_id: str, owner_name: str) -> None:
    owner = _add(parent, "Owner")
    _add(owner, "ID", owner_id)
    _add(owner, "DisplayName", owner_name)


def list_buckets(buckets: Iterable[tuple[str, float]], owner_id: str, owner_name: str) -> bytes:
    """ListAllMyBucketsResult for ``(name, created_epoch)`` pairs."""
    root = _root("ListAllMyBucketsResult")
    _owner(root, owner_id, owner_name)
    listing = _add(root, "Buckets")
    for name, created in buckets:
        bucket = _add(listing, "Bucket")
        _add(bucket, "Name", name)
        _add(bucket, "CreationDate", iso8601(created))
    return _serialize(root)


def location_constraint(region: str) -> bytes:
    """GetBucketLocation: us-east-1 is spelled as an empty element, as AWS does."""
    root = _root("LocationConstraint")
    if region and region != "us-east-1":
        root.text = region
    return _serialize(root)


def _contents(
    root: ET.Element,
    contents: Iterable[ObjectEntry],
    common_prefixes: Iterable[str],
    encode,
    owner: tuple[str, str] | None,
) -> None:
    for entry in contents:
        row = _add(root, "Contents")
        _add(row, "Key", encode(entry.key))
        _add(row, "LastModified", iso8601(entry.last_modified))
        _add(row, "ETag", f'"{entry.etag}"')
        _add(row, "Size", entry.size)
        if owner is not None:
            _owner(row, *owner)
        _add(row, "StorageClass", entry.storage_class)
    for prefix in common_prefixes:
        _add(_add(root, "CommonPrefixes"), "Prefix", encode(prefix))


def list_objects_v2(
    *,
    bucket: str,
    prefix: str,
    delimiter: str | None,
    max_keys: int,
    key_count: int,
    is_truncated: bool,
    continuation_token: str | None,
    next_continuation_token: str | None,
    start_after: str | None,
    encoding_type: str | None,
    contents: Iterable[ObjectEntry],
    common_prefixes: Iterable[str],
    fetch_owner: bool = False,
    owner: tuple[str, str] | None = None,
) -> bytes:
    """ListBucketResult for ``GET /bucket?list-type=2``; optional elements only when given.

    ``owner`` is ``(ID, DisplayName)``, listed per object only with ``fetch_owner``.
    """
    encode = _encoder(encoding_type)
    root = _root("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", encode(prefix))
    if continuation_token is not None:
        _add(root, "ContinuationToken", continuation_token)
    if next_continuation_token is not None:
        _add(root, "NextContinuationToken", next_continuation_token)
    if start_after is not None:
        _add(root, "StartAfter", encode(start_after))
    _add(root, "KeyCount", key_count)
    _add(root, "MaxKeys", max_keys)
    if delimiter:
        _add(root, "Delimiter", encode(delimiter))
    if encoding_type:
        _add(root, "EncodingType", encoding_type)
    _add(root, "IsTruncated", _bool(is_truncated))
    _contents(root, contents, common_prefixes, encode, owner if fetch_owner else None)
    return _serialize(root)


def list_objects_v1(
    *,
    bucket: str,
    prefix: str,
    delimiter: str | None,
    max_keys: int,
    is_truncated: bool,
    marker: str,
    next_marker: str | None,
    encoding_type: str | None,
    contents: Iterable[ObjectEntry],
    common_prefixes: Iterable[str],
    owner: tuple[str, str] | None = None,
) -> bytes:
    """ListBucketResult for ``GET /bucket``; ``owner`` ``(ID, DisplayName)`` is listed per object, as v1 does."""
    encode = _encoder(encoding_type)
    root = _root("ListBucketResult")
    _add(root, "Name", bucket)
    _add(root, "Prefix", encode(prefix))
    _add(root, "Marker", encode(marker))
    if next_marker is not None:
        _add(root, "NextMarker", encode(next_marker))
    _add(root, "MaxKeys", max_keys)
    if delimiter:
        _add(root, "Delimiter", encode(delimiter))
    if encoding_type:
        _add(root, "EncodingType", encoding_type)
    _add(root, "IsTruncated", _bool(is_truncated))
    _contents(root, contents, common_prefixes, encode, owner)
    return _serialize(root)


# Public names for the builders other S3 XML modules share (xml_multipart, subresources).
element, add, serialize, add_owner, bool_text, encoder = _root, _add, _serialize, _owner, _bool, _encoder


# -- parsing -------------------------------------------------------------------


class _Refused(Exception):
    """A DOCTYPE or entity declaration: stop before expat expands anything."""


def _refuse(*_args: object) -> None:
    raise _Refused


def parse_xml(body: bytes, *, limit: int = MAX_REQUEST_XML, strip_namespace: bool = True) -> ET.Element:
    """Parse a request body (DeleteObjects, CompleteMultipartUpload, ...) or raise MalformedXML.

    Refuses bodies over ``limit`` bytes, any DOCTYPE / ENTITY declaration, and
    anything not well-formed.  With ``strip_namespace`` (the default) tags are
    plain local names, since clients send these bodies with and without the S3
    namespace and S3 accepts both.
    """
    if len(body) > limit:
        raise MalformedXML(f"XML body of {len(body)} bytes exceeds the {limit}-byte limit")
    if not body.strip():
        raise MalformedXML("empty XML body")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")

    def tag(name: str) -> str:
        uri, sep, local = name.rpartition("}")
        if not sep or strip_namespace:
            return local
        return "{" + uri + "}" + local

    def start(name: str, attrs: dict[str, str]) -> None:
        builder.start(tag(name), {tag(k): v for k, v in attrs.items()})

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda name: builder.end(tag(name))
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = _refuse
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(body, True)
        return builder.close()
    except _Refused:
        raise MalformedXML("XML with a DOCTYPE or entity declaration is not accepted") from None
    except (expat.ExpatError, AssertionError) as exc:  # TreeBuilder.close asserts a root exists
        raise MalformedXML(f"XML body is not well-formed: {exc}") from None


def create_session_result(access_key_id: str, secret: str, token: str, expires: float) -> bytes:
    """CreateSession (S3 Express One Zone): short-lived credentials for one bucket."""
    root = _root("CreateSessionResult")
    creds = _add(root, "Credentials")
    _add(creds, "SessionToken", token)
    _add(creds, "SecretAccessKey", secret)
    _add(creds, "AccessKeyId", access_key_id)
    _add(creds, "Expiration", iso8601(expires))
    return _serialize(root)
