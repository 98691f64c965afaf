"""CopyObject and UploadPartCopy: an object's bytes streamed into another object or a part.

The source is an open snapshot (``Storage.open_reader``) streamed chunk by
chunk into ``Storage.write_object`` / ``UploadStore.write_part``: never held
in memory, unaffected by appends to the source meanwhile (even onto itself).

Following the CopyObject and UploadPartCopy API reference:
- ``x-amz-copy-source``: URL-encoded ``bucket/key`` (a leading ``/`` allowed),
  ``?versionId=null`` tolerated (this server's buckets are unversioned);
- ``x-amz-metadata-directive``: COPY (default: the source's metadata and
  content type) or REPLACE (the request's);
- copying an object onto itself needs REPLACE (or a new checksum algorithm or
  encryption), else 400 InvalidRequest;
- ``x-amz-copy-source-if-*``: every failed condition is 412 PreconditionFailed;
- ``x-amz-copy-source-range``: only UploadPartCopy takes it, strictly
  ``bytes=first-last`` (else InvalidArgument; past the source's end InvalidRange);
  CopyObject refuses it with InvalidArgument rather than copy something else than asked;
- sources over 5 GiB are refused (use UploadPartCopy), as S3 does.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from urllib.parse import unquote

from server import checksums
from server.checksum_headers import parse_algorithm, xml_name
from server.conditional import Conditions, evaluate
from server.context import Context
from server.errors import InvalidArgument, InvalidRange, InvalidRequest, NotImplemented_
from server.http import Response
from server.multipart import _store, part_number
from server.objects import META_PREFIX, SSE_HEADERS
from server.records import GiB, NewObject, ObjectInfo
from server.versions import check_version_id
from server.xml_results import copy_result

COPY_SOURCE = "x-amz-copy-source"
COPY_RANGE = "x-amz-copy-source-range"
MAX_COPY_SOURCE = 5 * GiB
XML_TYPE = [("content-type", "application/xml")]
SOURCE_SSE_C = "x-amz-copy-source-server-side-encryption-customer-"


def _anyone(*_: object) -> None:
    return None


def parse_copy_source(value: str) -> tuple[str, str]:
    """(bucket, key) of an ``x-amz-copy-source`` value."""
    path, _, query = value.partition("?")
    try:
        path = unquote(path, errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgument("The copy source is not valid UTF-8.", ArgumentName=COPY_SOURCE) from None
    bucket, _, key = path.removeprefix("/").partition("/")
    if not bucket or not key:
        raise InvalidArgument(
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            ArgumentName=COPY_SOURCE, ArgumentValue=value,
        )  # fmt: skip
    params = dict(part.partition("=")[::2] for part in query.split("&") if part)
    check_version_id({k: unquote(v) for k, v in params.items()})
    return bucket, key


def parse_copy_range(value: str, size: int) -> tuple[int, int]:
    """``[start, end)`` of ``bytes=first-last`` (both required, inclusive)."""
    unit, _, spec = value.strip().partition("=")
    first, dash, last = spec.partition("-")
    if unit != "bytes" or not dash or not (first.isascii() and first.isdigit() and last.isascii() and last.isdigit()):
        raise InvalidArgument(
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the "
            "zero-based offsets of the first and last bytes to copy",
            ArgumentName=COPY_RANGE, ArgumentValue=value,
        )  # fmt: skip
    start, end = int(first), int(last) + 1
    if start >= end or end > size:
        raise InvalidRange(f"The requested range {value!r} is not satisfiable for an object of {size} bytes.",
                           ActualObjectSize=str(size), RangeRequested=value)  # fmt: skip
    return start, end


def _source_checks(ctx: Context, source: ObjectInfo) -> None:
    evaluate(Conditions.from_headers(ctx.request.header, "x-amz-copy-source-"), source.etag, source.last_modified,
             copy_source=True)  # fmt: skip


async def copy_object(
    ctx: Context, *,
    authorize_write: Callable[[ObjectInfo | None], None] = _anyone,
    authorize_read: Callable[[str, str], None] = _anyone,
) -> Response:  # fmt: skip
    """``PUT /bucket/key`` with ``x-amz-copy-source``.  ``authorize_read(bucket, key)`` may refuse
    the source, ``authorize_write`` sees the destination under its lock (as PutObject's)."""
    request = ctx.request
    src_bucket, src_key = parse_copy_source(request.header(COPY_SOURCE) or "")
    authorize_read(src_bucket, src_key)
    if request.header(COPY_RANGE) is not None:
        raise InvalidArgument("x-amz-copy-source-range is only accepted by UploadPartCopy.", ArgumentName=COPY_RANGE)
    if any(n.startswith(SOURCE_SSE_C) or n.startswith("x-amz-server-side-encryption-customer-") for n, _ in request.headers):
        raise NotImplemented_("Server-side encryption with customer keys (SSE-C) is not supported.")
    directive = (request.header("x-amz-metadata-directive") or "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise InvalidArgument("Unknown metadata directive.", ArgumentName="x-amz-metadata-directive")
    raw_algorithm = request.header("x-amz-checksum-algorithm")
    algorithm = parse_algorithm(raw_algorithm) if raw_algorithm else None
    sse = {n: v for n, v in request.headers if n in SSE_HEADERS}
    async with ctx.storage.open_reader(src_bucket, src_key) as reader:
        source = reader.info
        _source_checks(ctx, source)
        if (src_bucket, src_key) == (ctx.bucket, ctx.key) and directive == "COPY" and not sse and algorithm is None:
            raise InvalidRequest(
                "This copy request is illegal because it is trying to copy an object to itself without changing the "
                "object's metadata, storage class, website redirect location or encryption attributes."
            )
        if source.size > MAX_COPY_SOURCE:
            raise InvalidRequest(
                f"The specified copy source is larger than the maximum allowable size for a copy source: {MAX_COPY_SOURCE}"
            )
        if directive == "REPLACE":
            content_type = request.header("content-type")
            metadata = {n[len(META_PREFIX):]: v for n, v in request.headers if n.startswith(META_PREFIX)}
        else:
            content_type, metadata = source.content_type, dict(source.metadata)
        kept = {n: v for n, v in source.system.items() if n.startswith("x-rustfs-meta-")}
        if algorithm is None and source.checksum is not None:
            algorithm = source.checksum.algorithm
        new = NewObject(content_type, metadata, {**kept, **sse}, checksum_algorithm=algorithm)
        async with aclosing(reader.stream()) as body:
            info = await ctx.storage.write_object(
                ctx.bucket, ctx.key, body, offset=None, new=new, check_existing=authorize_write
            )
    found = {xml_name(info.checksum.algorithm): info.checksum.value} if info.checksum is not None else {}
    if not found and algorithm in (None, "crc32"):
        found = {"ChecksumCRC32": checksums.crc32_value(info.crc32)}
    headers = XML_TYPE + [(n, v) for n, v in info.system.items() if n in SSE_HEADERS]
    return Response(200, headers, copy_result("CopyObjectResult", info.etag, info.last_modified, found))


async def upload_part_copy(ctx: Context, *, authorize_read: Callable[[str, str], None] = _anyone) -> Response:
    """``PUT /bucket/key?partNumber=N&uploadId=U`` with ``x-amz-copy-source`` (and optionally a range)."""
    number = part_number(ctx)
    upload = await _store(ctx).get(ctx.bucket, ctx.key, ctx.query.get("uploadId", ""))
    src_bucket, src_key = parse_copy_source(ctx.request.header(COPY_SOURCE) or "")
    authorize_read(src_bucket, src_key)
    async with ctx.storage.open_reader(src_bucket, src_key) as reader:
        source = reader.info
        _source_checks(ctx, source)
        raw_range = ctx.request.header(COPY_RANGE)
        start, end = parse_copy_range(raw_range, source.size) if raw_range is not None else (0, source.size)
        if end - start > MAX_COPY_SOURCE:
            raise InvalidRequest(f"A part copy may be at most {MAX_COPY_SOURCE} bytes.")
        async with aclosing(reader.stream(start, end)) as body:
            part = await _store(ctx).write_part(upload, number, body, _anyone)
    found = {xml_name(upload.checksum_algorithm): part.checksum} if part.checksum is not None else {}
    return Response(200, XML_TYPE, copy_result("CopyPartResult", part.etag, part.last_modified, found))
