"""Multipart upload operations: Create, UploadPart (and UploadPartCopy), Complete, Abort, ListParts.

Parts live in ``server.uploads`` until Complete streams them, in order, into
the object through ``Storage.write_object`` -- so the result is an ordinary
object, appendable afterwards (the append guide: "use multipart upload first
for larger payloads, then append").  Its ETag is S3's multipart ETag,
``md5(part md5s)-N``; an append then changes it as any append does.

Checksums (S3 user guide, "Checking object integrity"): an upload created with
``x-amz-checksum-algorithm`` keeps each part's checksum in that algorithm.
COMPOSITE (the default for CRC32, CRC32C, SHA-1, SHA-256) gives the object
``<checksum of the part checksums>-N``; FULL_OBJECT (CRC64NVME's only type,
optional for CRC32/CRC32C) gives the CRC of the whole object, combined from
the parts' CRCs without reading them again.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable

import trio

from server import checksums
from server.buckets import owner_id
from server.checksum_headers import parse_algorithm, xml_name
from server.context import Context
from server.datafiles import read_at
from server.errors import (
    EntityTooSmall,
    InvalidArgument,
    InvalidPart,
    InvalidPartOrder,
    InvalidRequest,
    NotImplemented_,
)
from server.http import Response
from server.objects import META_PREFIX, SSE_C_HEADERS, SSE_HEADERS
from server.payload import Payload
from server.records import MiB, NewObject, ObjectInfo, StoredChecksum
from server.request_body import read_xml_body
from server.uploads import Part, Upload, UploadStore, new_upload_id
from server.xml_multipart import PartRow, complete_result, initiate_result, list_parts_result, parse_complete_request

MIN_PART_SIZE = 5 * MiB  # every part but the last (S3's limit)
MAX_PART_NUMBER = 10_000
XML_TYPE = [("content-type", "application/xml")]
FULL_OBJECT, COMPOSITE = "FULL_OBJECT", "COMPOSITE"


def _anyone(_: ObjectInfo | None) -> None:
    return None


def _store(ctx: Context) -> UploadStore:
    return ctx.storage.uploads


def checksum_type_for(algorithm: str | None, requested: str | None) -> str | None:
    """The upload's checksum type, refusing the combinations S3 refuses."""
    if requested is not None:
        requested = requested.strip().upper()
        if algorithm is None:
            raise InvalidRequest("The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.")
        if requested not in (FULL_OBJECT, COMPOSITE):
            raise InvalidRequest(f"Value for x-amz-checksum-type header is invalid: {requested!r}.")
    if algorithm is None:
        return None
    chosen = requested or (FULL_OBJECT if algorithm == "crc64nvme" else COMPOSITE)
    if chosen == FULL_OBJECT and algorithm not in ("crc32", "crc32c", "crc64nvme"):
        raise InvalidRequest(f"The FULL_OBJECT checksum type cannot be used with the {algorithm} checksum algorithm.")
    if chosen == COMPOSITE and algorithm == "crc64nvme":
        raise InvalidRequest("The COMPOSITE checksum type cannot be used with the crc64nvme checksum algorithm.")
    return chosen


def _checksum_headers(upload: Upload) -> list[tuple[str, str]]:
    if upload.checksum_algorithm is None:
        return []
    return [("x-amz-checksum-algorithm", upload.checksum_algorithm.upper()), ("x-amz-checksum-type", upload.checksum_type)]


async def create_multipart_upload(ctx: Context) -> Response:
    """``POST /bucket/key?uploads``: metadata, content type and checksum algorithm are fixed here."""
    await ctx.storage.get_bucket(ctx.bucket)
    request = ctx.request
    if any(name in SSE_C_HEADERS for name, _ in request.headers):
        raise NotImplemented_("Server-side encryption with customer keys (SSE-C) is not supported.")
    raw_algorithm = request.header("x-amz-checksum-algorithm")
    algorithm = parse_algorithm(raw_algorithm) if raw_algorithm else None
    upload = Upload(
        upload_id=new_upload_id(), bucket=ctx.bucket, key=ctx.key, initiated=time.time(),
        owner=ctx.auth.access_key_id, content_type=request.header("content-type"),
        metadata={n[len(META_PREFIX):]: v for n, v in request.headers if n.startswith(META_PREFIX)},
        system={n: v for n, v in request.headers if n in SSE_HEADERS},
        checksum_algorithm=algorithm,
        checksum_type=checksum_type_for(algorithm, request.header("x-amz-checksum-type")),
    )  # fmt: skip
    await _store(ctx).create(upload)
    return Response(200, XML_TYPE + _checksum_headers(upload), initiate_result(ctx.bucket, ctx.key, upload.upload_id))


def part_number(ctx: Context) -> int:
    raw = ctx.query.get("partNumber", "")
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_PART_NUMBER:
        raise InvalidArgument(
            f"Part number must be an integer between 1 and {MAX_PART_NUMBER}, inclusive",
            ArgumentName="partNumber", ArgumentValue=raw,
        )  # fmt: skip
    return int(raw)


async def upload_part(ctx: Context) -> Response:
    """``PUT /bucket/key?partNumber=N&uploadId=U``: the body streams to a part file; ETag = its MD5."""
    number = part_number(ctx)
    upload = await _store(ctx).get(ctx.bucket, ctx.key, ctx.query.get("uploadId", ""))
    payload = Payload(ctx.request, ctx.auth, max_body=ctx.config.max_body)
    algorithm = upload.checksum_algorithm
    sent = set(payload.expected) | ({a} if (a := _trailer_algorithm(ctx)) else set())
    if algorithm is not None and sent - {algorithm}:
        raise InvalidRequest(
            f"Checksum Type mismatch occurred, expected checksum Type: {algorithm}, actual checksum Type: {sorted(sent)[0]}"
        )

    def check(hasher) -> None:
        payload.check(hasher.digest())

    part = await _store(ctx).write_part(upload, number, payload, check)
    headers = [("etag", f'"{part.etag}"'), *payload.response_headers()]
    if part.checksum is not None and not payload.verified:
        headers.append((checksums.header_name(algorithm), part.checksum))
    return Response(200, headers)


def _trailer_algorithm(ctx: Context) -> str | None:
    trailer = (ctx.request.header("x-amz-trailer") or "").strip().lower()
    return trailer.removeprefix(checksums.HEADER_PREFIX) if trailer.startswith(checksums.HEADER_PREFIX) else None


def multipart_etag(parts: list[Part]) -> str:
    """S3's multipart ETag: MD5 of the concatenated binary part MD5s, then ``-<part count>``."""
    return f"{hashlib.md5(b''.join(bytes.fromhex(p.etag) for p in parts)).hexdigest()}-{len(parts)}"


def object_checksum(upload: Upload, parts: list[Part]) -> StoredChecksum | None:
    """The completed object's checksum from its parts' (see the module docstring)."""
    algorithm = upload.checksum_algorithm
    if algorithm is None:
        return None
    digests = [base64.b64decode(p.checksum or "") for p in parts]
    if upload.checksum_type == FULL_OBJECT:
        total = bytes(checksums.DIGEST_SIZES[algorithm])
        for part, digest in zip(parts, digests):
            total = checksums.combine(algorithm, total, digest, part.size)
        return StoredChecksum(algorithm, checksums.encode(total), FULL_OBJECT)
    hasher = checksums.FACTORIES[algorithm]()
    for digest in digests:
        hasher.update(digest)
    return StoredChecksum(algorithm, f"{checksums.encode(hasher.digest())}-{len(parts)}", COMPOSITE)


def chosen_parts(upload: Upload, stored: dict[int, Part], requested: list) -> list[Part]:
    """The parts a Complete request names, checked as S3 checks them."""
    previous = 0
    for item in requested:
        if item.number <= previous:
            raise InvalidPartOrder()
        previous = item.number
    parts = []
    for item in requested:
        part = stored.get(item.number)
        if part is None or part.etag != item.etag:
            raise InvalidPart(PartNumber=str(item.number), ETag=item.etag)
        algorithm = upload.checksum_algorithm
        given = item.checksums.get(algorithm) if algorithm else None
        if given is not None and given != part.checksum:
            raise InvalidPart(f"The {algorithm} checksum of part {item.number} does not match.", PartNumber=str(item.number))
        if given is None and upload.checksum_type == COMPOSITE:
            raise InvalidRequest(
                f"The upload was created using a {algorithm} checksum. The complete request must include the checksum "
                f"for each part. It was missing for part {item.number} in the request."
            )
        parts.append(part)
    for part in parts[:-1]:
        if part.size < MIN_PART_SIZE:
            raise EntityTooSmall(
                ProposedSize=str(part.size), MinSizeAllowed=str(MIN_PART_SIZE), PartNumber=str(part.number),
                ETag=part.etag,
            )  # fmt: skip
    return parts


async def complete_multipart_upload(
    ctx: Context, *, authorize_write: Callable[[ObjectInfo | None], None] = _anyone
) -> Response:
    """``POST /bucket/key?uploadId=U``: check the part list, stream the parts into the object.

    ``authorize_write`` sees the object under its lock, as for PutObject (an
    ``append`` key may not complete over an existing key)."""
    upload_id = ctx.query.get("uploadId", "")
    requested = parse_complete_request(await read_xml_body(ctx, headers_name_object=True))
    store = _store(ctx)
    async with store.locked(upload_id):
        upload = await store.get(ctx.bucket, ctx.key, upload_id, completed=True)
        if upload.result is not None:  # a repeated Complete: the same answer
            return _completed(ctx, upload, upload.result)
        parts = chosen_parts(upload, {p.number: p for p in await store.parts(upload_id)}, requested)
        checksum = object_checksum(upload, parts)
        _check_full_object_header(ctx, checksum)
        size = ctx.request.header("x-amz-mp-object-size")
        if size is not None and size != str(sum(p.size for p in parts)):
            raise InvalidRequest(f"The x-amz-mp-object-size {size!r} does not match the parts' total size.")
        new = NewObject(upload.content_type, upload.metadata, upload.system, checksum=checksum, etag=multipart_etag(parts))
        info = await ctx.storage.write_object(
            ctx.bucket, ctx.key, _parts_stream(store, parts), offset=None, new=new, check_existing=authorize_write
        )
        result = {"etag": info.etag}
        if checksum is not None:
            result.update(checksum=checksum.value, algorithm=checksum.algorithm, type=checksum.type)
        await store.finish(upload_id, result)
    return _completed(ctx, upload, result)


def _check_full_object_header(ctx: Context, checksum: StoredChecksum | None) -> None:
    """A full-object checksum the client sent with Complete must match the combined one."""
    for name, value in ctx.request.headers:
        if name.startswith(checksums.HEADER_PREFIX) and name.removeprefix(checksums.HEADER_PREFIX) in checksums.FACTORIES:
            if checksum is not None and checksum.type == FULL_OBJECT and name == checksums.header_name(checksum.algorithm):
                if value.strip() != checksum.value:
                    raise InvalidRequest(f"The {name} you specified did not match the calculated checksum.")


def _completed(ctx: Context, upload: Upload, result: dict) -> Response:
    checksum = (xml_name(result["algorithm"]), result["checksum"]) if "checksum" in result else None
    location = f"/{ctx.bucket}/{ctx.key}"
    body = complete_result(location, ctx.bucket, ctx.key, result["etag"], checksum, result.get("type"))
    return Response(200, XML_TYPE, body)


async def _parts_stream(store: UploadStore, parts: list[Part], chunk: int = MiB) -> AsyncIterator[bytes]:
    """The parts' bytes in order, one open file at a time (the upload's lock keeps them in place)."""
    for part in parts:
        fd = await trio.to_thread.run_sync(store.open_part, part)
        try:
            for offset in range(0, part.size, chunk):
                yield await trio.to_thread.run_sync(read_at, fd, offset, min(chunk, part.size - offset))
        finally:
            await trio.to_thread.run_sync(os.close, fd)


async def abort_multipart_upload(ctx: Context) -> Response:
    """``DELETE /bucket/key?uploadId=U``: the upload and its parts are gone; 204."""
    upload_id = ctx.query.get("uploadId", "")
    store = _store(ctx)
    async with store.locked(upload_id):
        await store.get(ctx.bucket, ctx.key, upload_id)
        await store.abort(upload_id)
    return Response(204, [])


async def list_parts(ctx: Context) -> Response:
    """``GET /bucket/key?uploadId=U``: parts by number, max-parts / part-number-marker paging."""
    upload = await _store(ctx).get(ctx.bucket, ctx.key, ctx.query.get("uploadId", ""))
    marker, max_parts = _int_param(ctx, "part-number-marker", 0), min(_int_param(ctx, "max-parts", 1000), 1000)
    remaining = [p for p in await _store(ctx).parts(upload.upload_id) if p.number > marker]
    shown, truncated = remaining[:max_parts], len(remaining) > max_parts
    name = xml_name(upload.checksum_algorithm) if upload.checksum_algorithm else None
    rows = [PartRow(p.number, p.last_modified, p.etag, p.size, (name, p.checksum) if name and p.checksum else None)
            for p in shown]  # fmt: skip
    body = list_parts_result(
        bucket=ctx.bucket, key=ctx.key, upload_id=upload.upload_id, marker=marker,
        next_marker=shown[-1].number if shown else None, max_parts=max_parts, truncated=truncated, parts=rows,
        owner=(owner_id(upload.owner), upload.owner),
        checksum_algorithm=upload.checksum_algorithm.upper() if upload.checksum_algorithm else None,
        checksum_type=upload.checksum_type,
    )  # fmt: skip
    return Response(200, XML_TYPE, body)


def _int_param(ctx: Context, name: str, default: int) -> int:
    raw = ctx.query.get(name)
    if raw is None:
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise InvalidArgument(f"Provided {name} not an integer or within integer range", ArgumentName=name,
                              ArgumentValue=raw)  # fmt: skip
    return int(raw)
