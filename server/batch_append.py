"""AppendObjects (``POST /bucket?appends``): many objects' appends in one request.

The wire format, and why tailbucket has it: ``sink.append_batch``.  Each item
is exactly a PutObject with ``x-amz-write-offset-bytes: <offset>`` (and
``x-amz-checksum-crc32`` when it gives one): the same storage call
(``Storage.write_object``: offset fencing under the object's lock, CRC32 and
ETag chain, durable before it returns), the same refusals (a key that is not
UTF-8 or longer than 1,024 bytes, as the router refuses its path;
``objects.parse_write_offset``, ``objects.check_appendable``), decided per
item; a refused item is its own result and the others go ahead.

The whole request is refused (an S3 XML error, nothing changed) when it fails
authentication, names a missing bucket, has no Content-Length, is larger than
MAX_BODY, does not match its ``x-amz-content-sha256`` (or Content-MD5 /
checksum header), or is not well formed: the body is read and checked whole
before any item is written.  The items then run concurrently (bounded), so
their commits share group commits instead of paying one flush each.

Each item that lands is one append in ``tailbucket_append_duration_seconds``, timed
from its start to its durable write, as a PutObject append is counted per request:
the server's metrics come with the request's Context.

A body is held in memory whole until its items are written: at most MAX_BODY
each, and MAX_HELD for all requests at once (``HeldBytes``: a request waits its
turn before reading its body), so memory stays bounded however many connections
send batches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

import structlog
import trio

from server import checksums
from server.bodies import INLINE_HASH_LIMIT
from server.context import Context
from server.errors import BadDigest, EntityTooLarge, InvalidArgument, InvalidRequest, KeyTooLongError, S3Error
from server.http import Response
from server.objects import check_appendable, parse_write_offset
from server.payload import Payload
from server.records import BodyDigest, BodyHasher, MiB, NewObject, ObjectInfo
from sink.append_batch import MAX_KEY_BYTES, BatchFormatError, BatchItem, ItemResult, decode_request, encode_results

log = structlog.get_logger("tailbucket.server.batch_append")

# The body is held whole while its items are written (each item's bytes are a view
# into it), so it is capped far below a PUT's 5 GiB: a batch carries many small
# appends (the agent's at most 256 KiB, agent.append_groups), a large one goes by
# PutObject.  Per connection this is 16x what a PUT holds before it spills to disk.
MAX_BODY = 16 * MiB
# Bodies held at once by all AppendObjects requests of the server (each waits in turn for
# room): max_connections requests of MAX_BODY each would otherwise be 16 GiB.
MAX_HELD = 4 * MAX_BODY
CONCURRENCY = 64  # items written at once: enough to fill group commits, bounded in tasks and open objects
ANSWER_HEADERS = [("content-type", "application/json")]


def _anyone(_: str) -> None:
    return None


async def append_objects(ctx: Context, *, authorize_append: Callable[[str], None] = _anyone) -> Response:
    """``authorize_append(key)`` may refuse one key (raising AccessDenied): that item's result says so."""
    await ctx.storage.get_bucket(ctx.bucket)
    payload = Payload(ctx.request, ctx.auth, max_body=min(MAX_BODY, ctx.config.max_body))  # MissingContentLength...
    async with _budget().hold(payload.length):
        try:
            items = decode_request(await _read_body(payload))
        except BatchFormatError as exc:
            raise InvalidRequest(str(exc)) from None
        return await _run_items(ctx, items, authorize_append)


async def _run_items(ctx: Context, items: list[BatchItem], authorize_append: Callable[[str], None]) -> Response:
    results: list[ItemResult] = [ItemResult(500)] * len(items)
    unstarted = iter(enumerate(items))
    metrics = ctx.metrics

    async def worker() -> None:
        # CONCURRENCY workers taking the next item each, not a task per item behind a
        # CapacityLimiter: spawning 1,000 tasks and their turns at the limiter made
        # the server's CPU per item ~1.4x (1,000 items of 100 B per request).
        for n, item in unstarted:
            started = time.perf_counter()
            results[n] = result = await _append(ctx, item, authorize_append)
            if result.ok and metrics is not None:
                metrics.observe_append(time.perf_counter() - started)

    async with trio.open_nursery() as nursery:
        for _ in range(min(CONCURRENCY, len(items))):
            nursery.start_soon(worker)
    return Response(200, ANSWER_HEADERS, encode_results(results))


async def _read_body(payload: Payload) -> bytearray | bytes:
    """The whole body (at most the ``payload.length`` it declared), its digests checked.

    Hashed in a worker thread when large: SHA-256 runs at ~1.4 GB/s here, a
    16 MiB body would hold the event loop ~12 ms."""
    limit = payload.length
    hasher = BodyHasher(md5=payload.content_md5 is not None)
    hasher.also = payload.hash_elsewhere()
    data: bytearray | bytes | None = payload.take_whole()
    if data is None:
        data = bytearray()
        async for chunk in payload:
            data += chunk
            if len(data) > limit:  # an aws-chunked body larger than it said
                raise EntityTooLarge(f"The body exceeds the maximum of {limit} bytes.")
    if len(data) > INLINE_HASH_LIMIT:
        await trio.to_thread.run_sync(hasher.update, data)
    else:
        hasher.update(data)
    payload.check(hasher.digest())
    return data


async def _append(ctx: Context, item: BatchItem, authorize_append: Callable[[str], None]) -> ItemResult:
    """One item, as the PutObject it stands for; its result either way."""
    try:
        info = await _write(ctx, item, authorize_append)
    except S3Error as exc:
        # The request log has one line for the whole batch (200): an item's refusal is told here.
        log.info("append_item_refused", bucket=ctx.bucket, key=item.key, offset=item.offset, status=exc.status,
                 code=exc.code, request_id=ctx.request_id)  # fmt: skip
        return ItemResult(exc.status, code=exc.code, message=exc.message)
    except Exception:
        log.exception("append_item_failed", bucket=ctx.bucket, key=item.key, offset=item.offset,
                      request_id=ctx.request_id)  # fmt: skip
        return ItemResult(500, code="InternalError", message="We encountered an internal error. Please try again.")
    return ItemResult(200, size=info.size, etag=f'"{info.etag}"')  # as PutObject's ETag header


async def _write(ctx: Context, item: BatchItem, authorize_append: Callable[[str], None]) -> ObjectInfo:
    _check_key(item.key)
    authorize_append(item.key)
    offset = parse_write_offset([str(item.offset)])
    crc32 = checksums.decode("crc32", item.crc32) if item.crc32 is not None else None
    max_appends = ctx.config.max_appends

    def check_existing(existing: ObjectInfo | None) -> None:
        if existing is not None:
            check_appendable(existing, max_appends=max_appends)

    return await ctx.storage.write_object(
        ctx.bucket,
        item.key,
        _ItemBody(item.body),
        offset=offset,
        new=None if offset else NewObject(checksum_algorithm="crc32" if crc32 is not None else None),
        check_existing=check_existing,
        check_body=partial(_check_crc32, crc32),
    )


class HeldBytes:
    """A budget of bytes held in memory, taken in turn: a request waits (first come, first
    served: ``trio.Lock`` is fair) until what it declared fits beside what others hold."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._turn = trio.Lock()
        self._freed = trio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        size = min(size, self.total)
        async with self._turn:
            while self.free < size:
                self._freed = trio.Event()
                await self._freed.wait()
            self.free -= size
        try:
            yield
        finally:
            self.free += size
            self._freed.set()


_held: trio.lowlevel.RunVar[HeldBytes] = trio.lowlevel.RunVar("append_objects_held")


def _budget() -> HeldBytes:
    """The server's budget: one per trio run (the server's life; tests may run several)."""
    try:
        return _held.get()
    except LookupError:
        _held.set(held := HeldBytes(MAX_HELD))
        return held


def _check_crc32(expected: bytes | None, digest: BodyDigest) -> None:
    """As ``Payload.check`` judges an ``x-amz-checksum-crc32`` header."""
    if expected is not None and digest.crc32.to_bytes(4, "big") != expected:
        raise BadDigest("The CRC32 you specified did not match the calculated checksum.")


def _check_key(key: str) -> None:
    """Refuse a key as the router refuses a PutObject's path (S3App._address), in its order and words."""
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\\ud800" in the JSON)
        raise InvalidArgument("The key is not valid UTF-8.") from None
    if size > MAX_KEY_BYTES:
        raise KeyTooLongError(f"Your key is too long: {size} bytes (at most {MAX_KEY_BYTES}).")


class _ItemBody:
    """An item's bytes as ``Storage.write_object`` takes a body: here whole already (``take_whole``)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = data

    def take_whole(self) -> bytes | memoryview:
        return self._data

    async def __aiter__(self):  # never reached: ``receive_body`` takes it whole
        yield self._data
