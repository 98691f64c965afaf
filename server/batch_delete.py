"""DeleteObjects (``POST /bucket?delete``): up to 1000 keys in one request.

As the DeleteObjects API reference describes: the body must come with
Content-MD5 or an ``x-amz-checksum-*`` (else 400 InvalidRequest); more than
1000 ``<Object>`` entries (or none) is MalformedXML; a missing key counts as
deleted; each key that cannot be deleted gets its own ``<Error>`` while the
others go ahead; ``<Quiet>true</Quiet>`` leaves the deleted keys out of the
answer.  ``VersionId`` may be ``null`` (unversioned buckets); any other
version does not exist (``NoSuchVersion``).

The deletes run concurrently (bounded), so their index commits share group
commits instead of paying one fsync each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import trio

from server import xml, xml_results
from server.context import Context
from server.errors import MalformedXML, S3Error
from server.http import Response
from server.request_body import read_xml_body, require_integrity_header
from server.versions import NULL_VERSION

MAX_OBJECTS = 1000
MAX_KEY_BYTES = 1024
CONCURRENCY = 32


@dataclass
class Entry:
    key: str
    version_id: str | None
    error: tuple[str, str] | None = None  # (code, message)


def _anyone(_: str) -> None:
    return None


def parse_delete_request(body: bytes) -> tuple[list[Entry], bool]:
    """The ``<Object>`` entries and the Quiet flag of a ``<Delete>`` body."""
    root = xml.parse_xml(body)
    if root.tag != "Delete":
        raise MalformedXML(f"expected <Delete>, got <{root.tag}>")
    quiet = False
    entries: list[Entry] = []
    for node in root:
        if node.tag == "Quiet":
            quiet = (node.text or "").strip().lower() == "true"
        elif node.tag == "Object":
            fields = {child.tag: child.text or "" for child in node}
            if "Key" not in fields:
                raise MalformedXML("each <Object> needs a <Key>")
            entries.append(Entry(fields["Key"], fields.get("VersionId")))
        else:
            raise MalformedXML(f"unexpected <{node.tag}> in <Delete>")
    if not entries or len(entries) > MAX_OBJECTS:
        raise MalformedXML(f"<Delete> must list 1 to {MAX_OBJECTS} objects, not {len(entries)}")
    return entries, quiet


async def delete_objects(ctx: Context, *, authorize_delete: Callable[[str], None] = _anyone) -> Response:
    """``authorize_delete(key)`` may refuse one key (raising AccessDenied): that key gets an ``<Error>``."""
    await ctx.storage.get_bucket(ctx.bucket)
    require_integrity_header(ctx)
    entries, quiet = parse_delete_request(await read_xml_body(ctx))
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def delete(entry: Entry) -> None:
        async with limiter:
            try:
                if entry.version_id is not None and entry.version_id != NULL_VERSION:
                    entry.error = ("NoSuchVersion", "The specified version does not exist.")
                    return
                if len(entry.key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES or not entry.key:
                    entry.error = ("KeyTooLongError" if entry.key else "InvalidArgument",
                                   "Your key is too long." if entry.key else "The key must not be empty.")  # fmt: skip
                    return
                authorize_delete(entry.key)
                await ctx.storage.delete_object(ctx.bucket, entry.key)
            except S3Error as exc:
                entry.error = (exc.code, exc.message)

    async with trio.open_nursery() as nursery:
        for entry in entries:
            nursery.start_soon(delete, entry)
    deleted = [] if quiet else [(e.key, e.version_id) for e in entries if e.error is None]
    errors = [(e.key, e.version_id, *e.error) for e in entries if e.error is not None]
    return Response(200, [("content-type", "application/xml")], xml_results.delete_result(deleted, errors))
