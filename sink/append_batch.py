"""AppendObjects, tailbucket's one extension to S3: many objects' appends in one request.

Why: an append costs the agent about the same CPU whatever its size (signing,
HTTP framing, a round trip, the task switches around it), so a thousand quiet
logs, each needing an append every second to stay fresh, cost a thousand
requests a second.  Log shippers' own APIs batch many streams per request
(Loki's push, Elasticsearch's bulk, Kinesis' PutRecords); S3 has DeleteObjects
for deletes but nothing for writes.  This is that, for appends, and nothing
more: every item is exactly a ``PutObject`` with ``x-amz-write-offset-bytes``
(APPEND.md), decided on its own.  Servers without it (AWS S3 Express One Zone,
RustFS) answer the probe with an error, and the agent sends one PUT per append.

The wire format (pure functions here; no I/O)::

    POST /{bucket}?appends                         SigV4 as any request
    content-type: application/x-tailbucket-appends
    content-length: N                              (required; no aws-chunked)

    {"appends":[{"key":K,"offset":O,"length":L,"crc32":C}, ...]}\\n   one line of JSON
    <the items' bodies, concatenated in item order>

``crc32`` (optional) is the body's CRC32, base64 of its 4 big-endian bytes, as
in ``x-amz-checksum-crc32``.  At most ``MAX_ITEMS`` items; a key at most once.
A key longer than S3's ``MAX_KEY_BYTES`` is well formed: that item's result is
400 ``KeyTooLongError``, as its PUT's answer, and the others go ahead.  Only a
key past ``MAX_KEY_FIELD_BYTES`` (64 KiB) refuses the request: a PUT to it never
reaches an answer about keys (its head alone passes the server's default 64 KiB
head limit, 431; httpx will not even build such a URL), so there is no answer to
mirror, only a broken client, and the JSON line stays small.
The answer to a well-formed request is 200 with one result per item, in order::

    {"results":[{"status":200,"size":S,"etag":E},
                {"status":400,"code":"InvalidWriteOffset","message":M}, ...]}

A result's status and code are what a ``PutObject`` of that item alone would
have answered; ``size`` is the object's length after the append.  A 200 result
is as durable as a PUT's 200.  A request that is not well formed (bad JSON,
lengths that do not add up, too many items, a repeated, empty or absurdly long
key) is refused whole
with an S3 XML error (400 ``InvalidRequest``) and changes nothing; so is one
that fails authentication or names a missing bucket.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

SUBRESOURCE = "appends"
CONTENT_TYPE = "application/x-tailbucket-appends"
MAX_ITEMS = 1000
MAX_KEY_BYTES = 1024  # S3's limit: a longer key is that item's KeyTooLongError
MAX_KEY_FIELD_BYTES = 64 * 1024  # a longer key refuses the whole request (see above)


class BatchFormatError(ValueError):
    """Raised by the decoders when a request or an answer is not in the format above."""


@dataclass(frozen=True)
class BatchItem:
    """One append: ``body`` at ``offset`` of ``key``."""

    key: str
    offset: int
    body: bytes | memoryview
    crc32: str | None = None


@dataclass(frozen=True)
class ItemResult:
    """What became of one item: ``status`` 200 with the new ``size`` and ``etag``, or an S3 error."""

    status: int
    size: int | None = None
    etag: str | None = None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def encode_request(items: Sequence[BatchItem]) -> bytes:
    """The request body for ``items``."""
    head = [{"key": i.key, "offset": i.offset, "length": len(i.body), **({"crc32": i.crc32} if i.crc32 else {})}
            for i in items]
    return b"".join([json.dumps({"appends": head}, separators=(",", ":")).encode(), b"\n", *(i.body for i in items)])


def decode_request(data: bytes | memoryview) -> list[BatchItem]:
    """The items of a request body (bodies are views into ``data``); ``BatchFormatError`` says what is wrong."""
    view = memoryview(data)
    newline = bytes(view[: 1 << 20]).find(b"\n")  # the JSON line is small next to a megabyte
    if newline < 0:
        raise BatchFormatError("the body must start with one line of JSON ending in a newline")
    try:
        head = json.loads(bytes(view[:newline]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BatchFormatError(f"the first line is not JSON: {exc}") from None
    entries = head.get("appends") if isinstance(head, dict) else None
    if not isinstance(entries, list):
        raise BatchFormatError('the first line must be an object with an "appends" list')
    if len(entries) > MAX_ITEMS:
        raise BatchFormatError(f"at most {MAX_ITEMS} appends per request, got {len(entries)}")
    items: list[BatchItem] = []
    seen: set[str] = set()
    at = newline + 1
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) - {"key", "offset", "length", "crc32"}:
            raise BatchFormatError(f"append {n}: expected key, offset, length and optionally crc32")
        key, offset, length, crc32 = entry.get("key"), entry.get("offset"), entry.get("length"), entry.get("crc32")
        if not isinstance(key, str) or not 1 <= len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_FIELD_BYTES:
            raise BatchFormatError(f"append {n}: the key must be a string of 1 to {MAX_KEY_FIELD_BYTES} bytes")
        if key in seen:
            raise BatchFormatError(f"append {n}: the key {key!r} appears more than once")
        for name, value in (("offset", offset), ("length", length)):
            if type(value) is not int or value < 0:
                raise BatchFormatError(f"append {n}: {name} must be a non-negative integer")
        if crc32 is not None and not isinstance(crc32, str):
            raise BatchFormatError(f"append {n}: crc32 must be a base64 string")
        if at + length > len(view):
            raise BatchFormatError(f"append {n}: the body ends before its {length} bytes")
        seen.add(key)
        items.append(BatchItem(key, offset, view[at : at + length], crc32))
        at += length
    if at != len(view):
        raise BatchFormatError(f"{len(view) - at} bytes follow the last append's body")
    return items


def encode_results(results: Sequence[ItemResult]) -> bytes:
    out = []
    for r in results:
        fields: dict[str, object] = {"status": r.status}
        fields.update({k: v for k, v in (("size", r.size), ("etag", r.etag), ("code", r.code),
                                         ("message", r.message)) if v is not None})
        out.append(fields)
    return json.dumps({"results": out}, separators=(",", ":")).encode()


def decode_results(data: bytes, count: int) -> list[ItemResult]:
    """The ``count`` results of an answer; ``BatchFormatError`` if it is not that."""
    try:
        entries = json.loads(data)["results"]
        results = [ItemResult(int(e["status"]), e.get("size"), e.get("etag"), e.get("code"), e.get("message"))
                   for e in entries]
    except (ValueError, KeyError, TypeError) as exc:
        raise BatchFormatError(f"not an AppendObjects answer: {exc}") from None
    if len(results) != count:
        raise BatchFormatError(f"{len(results)} results for {count} appends")
    for r in results:
        if r.ok and type(r.size) is not int:
            raise BatchFormatError("a 200 result must give the object's size")
    return results
