"""Small XML request bodies (DeleteObjects, CompleteMultipartUpload), read whole and verified.

They go through ``server.payload.Payload`` like any body, so signed,
unsigned and aws-chunked encodings, Content-MD5 and ``x-amz-checksum-*``
(header or trailer) are all checked before the XML is looked at.
"""

from __future__ import annotations

from server.context import Context
from server.errors import InvalidRequest, MalformedXML
from server.payload import Payload
from server.records import BodyHasher
from server.xml import MAX_REQUEST_XML


def has_integrity_header(ctx: Context) -> bool:
    """Content-MD5 or an ``x-amz-checksum-*`` value (header or announced trailer)."""
    names = {name for name, _ in ctx.request.headers}
    trailer = (ctx.request.header("x-amz-trailer") or "").lower()
    return (
        "content-md5" in names
        or any(n.startswith("x-amz-checksum-") and n not in ("x-amz-checksum-type", "x-amz-checksum-mode",
                                                             "x-amz-checksum-algorithm") for n in names)
        or trailer.startswith("x-amz-checksum-")
    )  # fmt: skip


def require_integrity_header(ctx: Context) -> None:
    """DeleteObjects needs Content-MD5 or a checksum, as AWS requires."""
    if not has_integrity_header(ctx):
        raise InvalidRequest("Missing required header for this request: Content-MD5")


async def read_xml_body(ctx: Context, limit: int = MAX_REQUEST_XML, *, headers_name_object: bool = False) -> bytes:
    """The whole body (at most ``limit`` bytes, else MalformedXML), its digests checked.

    ``headers_name_object``: the ``x-amz-checksum-*`` headers are the finished
    object's checksum (CompleteMultipartUpload), not the body's."""
    payload = Payload(ctx.request, ctx.auth, max_body=ctx.config.max_body)
    if headers_name_object:
        payload.expected = {}
    if payload.length > limit:
        raise MalformedXML(f"The XML body of {payload.length} bytes exceeds the {limit}-byte limit.")
    hasher = BodyHasher()
    chunks: list[bytes] = []
    async for chunk in payload:
        hasher.update(chunk)
        chunks.append(chunk)
        if hasher.size > limit:
            raise MalformedXML(f"The XML body exceeds the {limit}-byte limit.")
    payload.check(hasher.digest())
    return b"".join(chunks)
