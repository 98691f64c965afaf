"""Object operations: PutObject (with the append contract of APPEND.md), GetObject, HeadObject, DeleteObject."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator, Callable

from server.checksum_headers import checksum_response_headers, requested_algorithm
from server.conditional import NOT_MODIFIED, Conditions, evaluate
from server.context import Context
from server.errors import InvalidArgument, InvalidRange, InvalidRequest, NotImplemented_, TooManyParts
from server.http import Response
from server.payload import Payload
from server.storage import NewObject, ObjectInfo
from server.versions import check_version_id
from server.xml import http_date

WRITE_OFFSET = "x-amz-write-offset-bytes"
MAX_OFFSET = 2**63 - 1
SSE_HEADERS = (
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-context",
    "x-amz-server-side-encryption-bucket-key-enabled",
)
SSE_C_HEADERS = (
    "x-amz-server-side-encryption-customer-algorithm",
    "x-amz-server-side-encryption-customer-key",
    "x-amz-server-side-encryption-customer-key-md5",
)
COMPRESSION_META = "x-rustfs-meta-x-rustfs-internal-compression"
META_PREFIX = "x-amz-meta-"


def parse_write_offset(values: list[str]) -> int:
    """The append offset: ASCII digits only, at most 2^63-1 (``int()`` would accept ' 1_024 ', '+5', '١٠٢٤')."""
    if len(values) != 1:
        raise InvalidArgument(f"{WRITE_OFFSET} must be given once", ArgumentName=WRITE_OFFSET)
    raw = values[0]
    if not raw or not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_OFFSET:
        raise InvalidArgument(
            f"{WRITE_OFFSET} must be a decimal number from 0 to {MAX_OFFSET}, not {raw!r}",
            ArgumentName=WRITE_OFFSET,
        )
    return int(raw)


class _WriteHeaders:
    """The headers a PutObject acts on, sorted out in one pass (the last of a repeated name wins)."""

    __slots__ = ("offsets", "sse", "sse_c", "metadata", "rustfs", "names_checksum")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.offsets: list[str] = []
        self.sse: dict[str, str] = {}
        self.sse_c: dict[str, str] = {}
        self.metadata: dict[str, str] = {}  # x-amz-meta-*, without the prefix
        self.rustfs: dict[str, str] = {}  # x-rustfs-meta-*, kept as system metadata
        self.names_checksum = False  # a header that may name a checksum algorithm (``requested_algorithm``)
        for name, value in headers:
            if not name.startswith(_WRITE_PREFIXES):
                continue  # host, content-length, authorization, x-amz-date...
            if name == WRITE_OFFSET:
                self.offsets.append(value)
            elif name.startswith(META_PREFIX):
                self.metadata[name[len(META_PREFIX):]] = value
            elif name in SSE_HEADERS:
                self.sse[name] = value
            elif name in SSE_C_HEADERS:
                self.sse_c[name] = value
            elif name.startswith(RUSTFS_META_PREFIX):
                self.rustfs[name] = value
            else:
                self.names_checksum = True


RUSTFS_META_PREFIX = "x-rustfs-meta-"
# Every header _WriteHeaders sorts, or that may name a checksum algorithm, starts with one of these.
_WRITE_PREFIXES = (
    WRITE_OFFSET, META_PREFIX, "x-amz-server-side-encryption", RUSTFS_META_PREFIX,
    "x-amz-checksum-", "x-amz-sdk-checksum-", "x-amz-trailer",
)  # fmt: skip


def _anyone(existing: ObjectInfo | None) -> None:
    return None


def check_appendable(existing: ObjectInfo, *, max_appends: int | None, with_metadata: bool = False) -> None:
    """Refuse an append to ``existing`` as PutObject does (its offset already matched):
    one place for these rules, which AppendObjects' items (``server.batch_append``) share."""
    if existing.system and any(name in existing.system for name in SSE_HEADERS):
        raise InvalidArgument("The object is stored with server-side encryption and cannot be appended to.")
    if COMPRESSION_META in existing.system:
        raise InvalidArgument("The object is stored compressed and cannot be appended to; rewrite the object instead.")
    if with_metadata:
        raise InvalidRequest("User metadata (x-amz-meta-*) is set by the first write and cannot change on append.")
    if max_appends is not None and existing.appends >= max_appends:
        raise TooManyParts(f"The object has reached the limit of {max_appends} appends; write a new object.")


async def put_object(ctx: Context, *, authorize_write: Callable[[ObjectInfo | None], None] = _anyone) -> Response:
    """``authorize_write`` sees the object as it is under its lock (None: missing) and may refuse
    (an ``append`` key must not overwrite, ``server.access``); nothing is read or written before."""
    request = ctx.request
    if request.header("x-amz-copy-source") is not None:
        raise NotImplemented_("CopyObject is not implemented yet.")
    written = _WriteHeaders(request.headers)
    offsets, sse, sse_c, metadata = written.offsets, written.sse, written.sse_c, written.metadata
    offset = parse_write_offset(offsets) if offsets else None
    if offset is not None and (sse or sse_c):
        raise InvalidArgument("Server-side encryption cannot be combined with an append (x-amz-write-offset-bytes).")
    if sse_c:
        raise NotImplemented_("Server-side encryption with customer keys (SSE-C) is not supported.")
    system = {**sse, **written.rustfs} if written.rustfs else sse
    payload = Payload(request, ctx.auth, max_body=ctx.config.max_body)
    algorithm = requested_algorithm(request.headers) if written.names_checksum else None  # refused if unknown
    # Only a write at offset 0 (or none) may make the object: any other append leaves ``new`` unused.
    new = None if offset else NewObject(
        content_type=request.header("content-type"), metadata=metadata, system=system, checksum_algorithm=algorithm
    )

    def check_existing(existing: ObjectInfo | None) -> None:
        authorize_write(existing)
        if offset is not None and existing is not None:
            check_appendable(existing, max_appends=ctx.config.max_appends, with_metadata=bool(metadata))

    info = await ctx.storage.write_object(
        ctx.bucket,
        ctx.key,
        payload,
        offset=offset,
        new=new,
        check_existing=check_existing,
        check_body=payload.check,
        body_md5=payload.content_md5 is not None,
    )
    headers = [("etag", f'"{info.etag}"'), ("x-amz-object-size", str(info.size)), *payload.response_headers()]
    headers += [(name, value) for name, value in info.system.items() if name in SSE_HEADERS]
    return Response(200, headers)


def object_headers(info: ObjectInfo, *, with_checksum: bool) -> list[tuple[str, str]]:
    headers = [
        ("etag", f'"{info.etag}"'),
        ("last-modified", http_date(info.last_modified)),
        ("accept-ranges", "bytes"),
        ("content-type", info.content_type or "binary/octet-stream"),
    ]
    headers += [(META_PREFIX + name, value) for name, value in info.metadata.items()]
    headers += [(name, value) for name, value in info.system.items() if name in SSE_HEADERS]
    if with_checksum:
        headers += checksum_response_headers(info)
    return headers


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` for a single ``bytes=`` range; None (the whole object) when absent or not parseable."""
    if value is None:
        return None
    unit, _, spec = value.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or not dash or "," in spec:
        return None
    first, last = first.strip(), last.strip()
    if not (first.isdigit() or first == "") or not (last.isdigit() or last == "") or first == last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0 or size == 0:
            raise InvalidRange(ActualObjectSize=str(size), RangeRequested=value)
        return max(0, size - length), size
    start = int(first)
    end = size if last == "" else min(size, int(last) + 1)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise InvalidRange(ActualObjectSize=str(size), RangeRequested=value)
    return start, end


async def get_object(ctx: Context, *, head: bool = False) -> Response:
    stack = contextlib.AsyncExitStack()
    try:
        check_version_id(ctx.query)
        reader = await stack.enter_async_context(ctx.storage.open_reader(ctx.bucket, ctx.key))
        info = reader.info
        if evaluate(Conditions.from_headers(ctx.request.header), info.etag, info.last_modified) == NOT_MODIFIED:
            await stack.aclose()
            return Response(304, [("etag", f'"{info.etag}"'), ("last-modified", http_date(info.last_modified))])
        span = parse_range(ctx.request.header("range"), info.size)
        want_checksum = (ctx.request.header("x-amz-checksum-mode") or "").upper() == "ENABLED" and span is None
        headers = object_headers(info, with_checksum=want_checksum)
        start, end = span or (0, info.size)
        headers.append(("content-length", str(end - start)))
        if span is not None:
            headers.append(("content-range", f"bytes {start}-{end - 1}/{info.size}"))
        status = 206 if span is not None else 200
        if head:
            await stack.aclose()
            return Response(status, headers)
    except BaseException:
        await stack.aclose()
        raise
    return Response(status, headers, _stream(reader.stream(start, end), stack))


async def _stream(chunks: AsyncIterator[bytes], stack: contextlib.AsyncExitStack) -> AsyncIterator[bytes]:
    """The object's bytes; the reader is closed when the stream ends, fails or is closed early."""
    async with stack:
        async for chunk in chunks:
            yield chunk


async def delete_object(ctx: Context) -> Response:
    check_version_id(ctx.query)
    await ctx.storage.delete_object(ctx.bucket, ctx.key)
    return Response(204, [])
