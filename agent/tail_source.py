"""tail-to-bucket's inputs: its options, SOURCE, and where in SOURCE to resume.

The command keeps no state of its own: the object is the checkpoint.  If the
object holds data, ``resume_point`` checks that it is SOURCE's prefix (the last
<= 64 KiB before the resume point, by ranged GET; for ``--compress gzip`` the
members are decompressed to count SOURCE bytes) and returns the offset to
continue from.  Anything else is a ``Failure``: never append onto data that is
not this source's.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Literal

import structlog
import trio

from agent.fingerprint import FileIdentity, open_regular
from agent.units import KiB, MiB
from sink.append import ObjectWriter
from sink.client import S3Client
from sink.errors import AuthError, SinkError
from sink.retry import RetryPolicy, call_with_retry

log = structlog.get_logger()

DEFAULT_BATCH = 16 * MiB  # 64 appends (round trips, fsyncs) per GiB; two chunks in memory: peak RSS ~70 MiB
VERIFY_WINDOW = 64 * KiB  # how much of the object's end is compared with SOURCE before resuming
ONE_SHOT_RETRY = RetryPolicy(base=0.2, cap=5.0, max_attempts=8)


class Failure(Exception):
    """A refusal or failure the command reports as one line and exit status 1."""


@dataclass(frozen=True)
class Options:
    source: str  # a path, or "-" for stdin
    bucket: str
    key: str
    follow: bool = False
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    create_bucket: bool = False
    batch_bytes: int = DEFAULT_BATCH
    flush_interval: float = 0.2
    compress: Literal["gzip"] | None = None
    addressing: Literal["auto", "path", "virtual"] = "auto"
    quiet: bool = False
    log_level: str | None = None
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


async def explain_forbidden(client: S3Client, opts: Options, exc: AuthError) -> AuthError:
    """A HEAD's 403 has no body; a 1-byte GET says which auth problem it is."""
    if exc.code != "Forbidden":
        return exc
    try:
        await client.get_object(opts.bucket, opts.key, (0, 0))
    except AuthError as precise:
        return precise
    except SinkError:
        pass
    return exc


# -- where to resume ---------------------------------------------------------------


class GzipMembersCounter:
    """How many bytes a run of gzip members decompresses to, and the last
    VERIFY_WINDOW of them, fed piece by piece with bounded output (blocking)."""

    def __init__(self) -> None:
        self.count = 0
        self.tail = b""
        self._member: zlib._Decompress | None = None  # the member being read, if one is open

    @property
    def inside_member(self) -> bool:
        return self._member is not None

    def feed(self, piece: bytes) -> None:
        """Raises zlib.error if the bytes are not gzip members."""
        while piece:
            if self._member is None:
                self._member = zlib.decompressobj(wbits=31)  # 16 + 15: gzip framing, 32 KiB window
            out = self._member.decompress(piece, 4 * MiB)
            self.count += len(out)
            self.tail = (self.tail + out)[-VERIFY_WINDOW:]
            if self._member.eof:
                piece, self._member = self._member.unused_data, None
            else:
                piece = self._member.unconsumed_tail


async def uncompressed_end(client: S3Client, opts: Options, length: int) -> tuple[int, bytes]:
    """For --compress gzip: how many SOURCE bytes the object's gzip members hold, and their tail."""
    counter = GzipMembersCounter()
    for start in range(0, length, 8 * MiB):
        end = min(start + 8 * MiB, length) - 1
        piece = await call_with_retry(lambda: client.get_object(opts.bucket, opts.key, (start, end)), ONE_SHOT_RETRY)
        try:
            await trio.to_thread.run_sync(counter.feed, piece)
        except zlib.error as exc:
            raise Failure(f"{opts.url} holds {length} bytes that are not gzip members ({exc}); "
                          "refusing to append (delete the object or choose another key)") from exc
    if counter.inside_member:
        raise Failure(f"{opts.url} ends inside a gzip member; refusing to append onto it")
    return counter.count, counter.tail


async def resume_point(client: S3Client, writer: ObjectWriter, opts: Options, source: Source) -> int:
    """The SOURCE offset to continue from: the object must hold exactly SOURCE's first bytes."""
    try:
        length = await writer.open()
    except AuthError as exc:
        raise await explain_forbidden(client, opts, exc) from None
    if length == 0:
        return 0
    if opts.compress:
        end, tail = await uncompressed_end(client, opts, length)
    else:
        n = min(length, VERIFY_WINDOW)
        get = lambda: client.get_object(opts.bucket, opts.key, (length - n, length - 1))  # noqa: E731
        end, tail = length, await call_with_retry(get, ONE_SHOT_RETRY)
    ours = await source.bytes_before(end, len(tail))
    if ours is None:
        raise Failure(f"{opts.url} holds {end} bytes of data but {opts.source} is shorter; "
                      "refusing to append onto data that is not this source's prefix")
    if ours != tail:
        raise Failure(f"{opts.url} ({end} bytes) is not a prefix of {opts.source}: the bytes before offset {end} "
                      "differ; refusing to append (delete the object or choose another key)")
    log.info("resume_checked", object=opts.url, object_length=length, source_offset=end)
    return end


def read_exact(fd: int, view: memoryview, offset: int | None) -> int:
    """Fill ``view`` from ``offset`` (None: the current position); fewer bytes only at EOF."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got) if offset is not None else os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    return got


def read_at(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` read straight into a new ``bytes`` (fewer only at EOF)."""
    data = os.pread(fd, size, offset)
    while 0 < len(data) < size:  # a short read before EOF: rare, so the join's copy is too
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


class Source:
    """SOURCE: a regular file (``fd``, ``size`` at start) or stdin (``fd`` 0, size unknown)."""

    def __init__(self, opts: Options) -> None:
        self.name = opts.source
        self.fd = 0
        self.size: int | None = None
        self.identity: FileIdentity | None = None
        self.consumed = 0  # stdin: bytes read so far
        if opts.source != "-":
            try:
                self.fd, probe = open_regular(opts.source)
            except OSError as exc:
                raise Failure(f"cannot read {opts.source}: {exc.strerror or exc}") from exc
            self.size, self.identity = probe.size, probe.identity

    async def bytes_before(self, end: int, n: int) -> bytes | None:
        """SOURCE bytes [end - n, end), or None if SOURCE is shorter than ``end``."""
        return await trio.to_thread.run_sync(self._bytes_before, end, n)

    def _bytes_before(self, end: int, n: int) -> bytes | None:
        buf = bytearray(n)
        if self.size is not None:  # a file: read just that window
            return bytes(buf) if self.size >= end and read_exact(self.fd, memoryview(buf), end - n) == n else None
        skip = bytearray(min(end, 1 * MiB) or 1)
        while self.consumed < end - n:  # stdin: read and drop up to the window
            got = read_exact(self.fd, memoryview(skip)[: min(len(skip), end - n - self.consumed)], None)
            if got == 0:
                return None
            self.consumed += got
        got = read_exact(self.fd, memoryview(buf), None)
        self.consumed += got
        return bytes(buf) if got == n else None

    def close(self) -> None:
        if self.fd:
            os.close(self.fd)
            self.fd = 0
