"""``tail-to-bucket``: ship one file (or stdin) into an S3 object by appending.

The command is stateless: the object is the checkpoint.  Before sending, it
HEADs the object and, if it holds data, checks that those bytes are SOURCE's
prefix (the last <= 64 KiB before the resume point, by ranged GET), then sends
only the rest.  So running the same command again after a crash, Ctrl-C or a
network failure resumes exactly, and it never appends onto unrelated data.

* one-shot: ships SOURCE up to its size at start in ``--batch-bytes`` appends;
  a worker thread reads the next chunk (``preadv`` into one reused buffer)
  while the current one is on the wire: at most two chunks in memory.
* ``--follow``: the agent's ``Tailer`` (rotation and truncation are handled
  there, only there), the agent's batcher (flush on bytes or age), one writer.
* stdin: read as it comes, batched like ``--follow``, until EOF.

Bodies are signed ``UNSIGNED-PAYLOAD`` and carry a CRC32 checksum header
(``sink.protocol``), as the AWS SDKs do for S3 over TLS: no SHA-256 pass over
every byte.  Directory buckets (``NAME--AZID--x-s3``) use S3 Express sessions.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import signal
import sys
import typing
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Literal

import httpx
import structlog
import trio

from agent.batcher import Batch, BatchRules, Chunk, run_batcher
from agent.fingerprint import FileIdentity, open_regular
from agent.progress import ProgressBar
from agent.tailer import BEGINNING, ReadAheadBudget, StartAt, Tailer
from agent.units import KiB, MiB, parse_duration, parse_size
from sink.append import ObjectWriter
from sink.client import S3Client
from sink.compress import Codec, GzipMembers, Identity
from sink.credentials import resolve_config
from sink.errors import AuthError, ConflictError, NotFoundError, RemoteError, SinkError, TransportError
from sink.logs import configure_logging
from sink.protocol import Endpoint, aws_endpoint, s3express_endpoint
from sink.retry import RetryPolicy, call_with_retry
from sink.session import SESSION_TOKEN_HEADER, SIGNING_SERVICE, S3ExpressSessions
from sink.sigv4 import SigV4Auth

log = structlog.get_logger()

PROG = "tail-to-bucket"
EXIT_FAILED, EXIT_USAGE = 1, 2
DEFAULT_BATCH = 16 * MiB  # 64 appends (round trips, fsyncs) per GiB; two chunks in memory: peak RSS ~70 MiB
MAX_BATCH = 1024 * MiB
VERIFY_WINDOW = 64 * KiB  # how much of the object's end is compared with SOURCE before resuming
READ_SIZE = 1 * MiB  # tailer / stdin read size in streaming modes
STOP_GRACE = 30.0  # after Ctrl-C / SIGTERM, how long the append in flight may take to finish
ONE_SHOT_RETRY = RetryPolicy(base=0.2, cap=5.0, max_attempts=8)
FOLLOW_RETRY = RetryPolicy(base=0.2, cap=2.0, max_attempts=None, max_elapsed=math.inf)  # the file is the buffer
STDIN_IDENTITY = FileIdentity(0, 0, 0, "")
_DIRECTORY_BUCKET = re.compile(r".+--[a-z0-9-]+--x-s3")

EXAMPLES = """\
examples:
  tail-to-bucket /var/log/app.log s3://logs/web1/app.log
  tail-to-bucket -f --flush-interval 1s /var/log/app.log s3://logs/web1/app.log
  journalctl -f -o json | tail-to-bucket --compress gzip - s3://logs/web1/journal.json.gz
  tail-to-bucket --endpoint-url http://127.0.0.1:9000 --create-bucket big.log s3://scratch/big.log

Run the same command again to resume: the object must hold a prefix of SOURCE
(checked), and only the rest is sent.  Credentials, region and endpoint come
from the AWS environment variables and profiles, as for the aws CLI.
exit status: 0 done, 1 failed (one line says what), 2 usage error, 130/143 interrupted."""


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


class _Parser(argparse.ArgumentParser):
    """argparse, but a misuse is one line (and exit status 2), not the whole usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Ship a file (or stdin) into an S3 object by appending, exactly once.")
    p.add_argument("source", metavar="SOURCE", help="file to ship, or - for stdin")
    p.add_argument("destination", metavar="s3://BUCKET/KEY")
    p.add_argument("-f", "--follow", action="store_true", help="keep shipping new lines, like tail -F")
    p.add_argument("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL / profile / AWS)")
    p.add_argument("--region", help="signing region (default: AWS_REGION / profile / us-east-1)")
    p.add_argument("--profile", help="AWS profile for credentials and settings")
    p.add_argument("--create-bucket", action="store_true", help="create the bucket if it does not exist")
    p.add_argument("--batch-bytes", default="16MiB", help="largest append (default 16MiB; memory ~ 2x this)")
    p.add_argument("--flush-interval", default="200ms", help="ship new lines within this time (default 200ms)")
    p.add_argument("--compress", choices=["gzip"], help="each append is one gzip member (the object stays a valid .gz)")
    p.add_argument("--addressing", choices=["auto", "path", "virtual"], default="auto", help="bucket in the path or host")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log events to stderr (default: none)")
    p.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")
    return p


def parse_args(argv: list[str]) -> Options:
    """Options from the command line; exits 2 with one message on misuse (argparse's convention)."""
    parser = _parser()
    ns = parser.parse_args(argv)
    if not ns.destination.startswith("s3://"):
        parser.error(f"destination must be s3://BUCKET/KEY, got {ns.destination!r}")
    bucket, _, key = ns.destination[len("s3://"):].partition("/")
    if not bucket or not key:
        parser.error(f"destination must name a bucket and a key: s3://BUCKET/KEY, got {ns.destination!r}")
    try:
        batch = parse_size(ns.batch_bytes)
        flush = parse_duration(ns.flush_interval)
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= batch <= MAX_BATCH:
        parser.error(f"--batch-bytes must be between 1 byte and 1GiB, got {ns.batch_bytes}")
    if flush <= 0:
        parser.error("--flush-interval must be positive")
    if ns.follow and ns.source == "-":
        parser.error("--follow needs a file; stdin is read until it ends anyway")
    if ns.endpoint_url is not None:
        try:
            Endpoint.parse(ns.endpoint_url)
        except SinkError as exc:
            parser.error(str(exc))
    return Options(ns.source, bucket, key, ns.follow, ns.endpoint_url, ns.region, ns.profile, ns.create_bucket,
                   batch, flush, ns.compress, ns.addressing, ns.quiet, ns.log_level, ns.log_format)


# -- talking to S3 ---------------------------------------------------------------


@asynccontextmanager
async def open_s3(opts: Options) -> AsyncIterator[tuple[S3Client, S3Client]]:
    """(object client, bucket client): the second signs with the long-term keys
    (CreateBucket); for a directory bucket the first signs with session keys."""
    cfg = resolve_config(os.environ, region=opts.region, endpoint_url=opts.endpoint_url, profile=opts.profile)
    express = bool(_DIRECTORY_BUCKET.fullmatch(opts.bucket))
    if cfg.endpoint_url:
        endpoint = Endpoint.parse(cfg.endpoint_url)
    else:
        endpoint = s3express_endpoint(opts.bucket, cfg.region) if express else aws_endpoint(cfg.region)
    keys = SigV4Auth(cfg.access_key_id, cfg.secret_access_key, cfg.region, session_token=cfg.session_token,
                     service=SIGNING_SERVICE if express else "s3", unsigned_payload=True)
    timeout = httpx.Timeout(120.0, connect=15.0)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=4)) as http:
        admin = S3Client(http, endpoint, auth=keys, addressing=opts.addressing, region=cfg.region)
        if not express:
            yield admin, admin
            return

        def session_signer(grant):  # type: ignore[no-untyped-def]
            return SigV4Auth(grant.access_key_id, grant.secret_access_key, cfg.region, service=SIGNING_SERVICE,
                             session_token=grant.session_token, session_token_header=SESSION_TOKEN_HEADER,
                             unsigned_payload=True)

        sessions = S3ExpressSessions(admin, signer=session_signer)
        yield S3Client(http, endpoint, auth=sessions, addressing=opts.addressing, region=cfg.region), admin


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


def _gunzip_count(data: list[bytes], state: dict) -> None:
    """Feed compressed bytes; count the output and keep its last VERIFY_WINDOW bytes (blocking)."""
    for piece in data:
        while piece:
            d = state.setdefault("d", zlib.decompressobj(wbits=31))
            out = d.decompress(piece, 4 * MiB)
            state["count"] += len(out)
            state["tail"] = (state["tail"] + out)[-VERIFY_WINDOW:]
            if d.eof:
                piece = d.unused_data
                del state["d"]
            else:
                piece = d.unconsumed_tail


async def uncompressed_end(client: S3Client, opts: Options, length: int) -> tuple[int, bytes]:
    """For --compress gzip: how many SOURCE bytes the object's gzip members hold, and their tail."""
    state: dict = {"count": 0, "tail": b""}
    for start in range(0, length, 8 * MiB):
        end = min(start + 8 * MiB, length) - 1
        piece = await call_with_retry(lambda: client.get_object(opts.bucket, opts.key, (start, end)), ONE_SHOT_RETRY)
        try:
            await trio.to_thread.run_sync(_gunzip_count, [piece], state)
        except zlib.error as exc:
            raise Failure(f"{opts.url} holds {length} bytes that are not gzip members ({exc}); "
                          "refusing to append (delete the object or choose another key)") from exc
    if "d" in state:
        raise Failure(f"{opts.url} ends inside a gzip member; refusing to append onto it")
    return state["count"], state["tail"]


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


# -- sources -----------------------------------------------------------------------


def _read_exact(fd: int, view: memoryview, offset: int | None) -> int:
    """Fill ``view`` from ``offset`` (None: the current position); fewer bytes only at EOF."""
    got = 0
    while got < len(view):
        n = os.preadv(fd, [view[got:]], offset + got) if offset is not None else os.readv(fd, [view[got:]])
        if n == 0:
            break
        got += n
    return got


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
            return bytes(buf) if self.size >= end and _read_exact(self.fd, memoryview(buf), end - n) == n else None
        skip = bytearray(min(end, 1 * MiB) or 1)
        while self.consumed < end - n:  # stdin: read and drop up to the window
            got = _read_exact(self.fd, memoryview(skip)[: min(len(skip), end - n - self.consumed)], None)
            if got == 0:
                return None
            self.consumed += got
        got = _read_exact(self.fd, memoryview(buf), None)
        self.consumed += got
        return bytes(buf) if got == n else None

    def close(self) -> None:
        if self.fd:
            os.close(self.fd)
            self.fd = 0


def _encode(codec: Codec, view: memoryview) -> bytes:
    """The body to send for these bytes (a copy: httpx sends ``bytes``)."""
    return codec.encode(bytes(view))


def _read_some(fd: int, buf: bytearray) -> bytes:
    """Whatever stdin has now (blocks until something or EOF)."""
    n = os.readv(fd, [buf])
    return bytes(memoryview(buf)[:n])


# -- stopping --------------------------------------------------------------------


@dataclass
class Stopper:
    """Ctrl-C / SIGTERM: stop taking new work at once; the append in flight goes on."""

    signum: int | None = None
    _idle: set[trio.CancelScope] = field(default_factory=set)

    def request(self, signum: int) -> None:
        self.signum = signum
        for scope in self._idle:
            scope.cancel()

    @contextmanager
    def idle(self) -> Iterator[None]:
        """A wait (for the next chunk) that a stop request interrupts."""
        with trio.CancelScope() as scope:
            if self.signum is not None:
                scope.cancel()
            self._idle.add(scope)
            try:
                yield
            finally:
                self._idle.discard(scope)


async def watch_signals(stopper: Stopper, work: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            stopper.request(signum)
            log.info("stop_requested", signal=signal.Signals(signum).name)
            break
        with trio.move_on_after(STOP_GRACE):
            async for _ in signals:  # a second signal: stop now
                break
    work.cancel()


# -- shipping ----------------------------------------------------------------------


@dataclass
class Shipper:
    """Sends bodies through the writer; counts SOURCE bytes shipped."""

    opts: Options
    writer: ObjectWriter
    progress: ProgressBar
    stopper: Stopper
    shipped: int  # SOURCE offset shipped so far

    async def send(self, body: bytes, source_end: int) -> None:
        length = await self.writer.append(body)
        # httpx's Response and its stream form a reference cycle that holds the
        # request, body included, until the cyclic GC runs: collect the young
        # generations now, or a few past bodies pile up in memory.
        gc.collect(1)
        self.shipped = source_end
        log.info("chunk_shipped", object=self.opts.url, source_offset=source_end, object_length=length, body=len(body))
        self.progress.update(source_end)

    async def next_item(self, channel: trio.MemoryReceiveChannel) -> object | None:  # type: ignore[type-arg]
        """The next item, or None at the end of input or on a stop request."""
        item = None
        with self.stopper.idle():
            try:
                item = await channel.receive()
            except trio.EndOfChannel:
                return None
        return None if self.stopper.signum is not None else item


async def ship_file(shipper: Shipper, source: Source, codec: Codec) -> None:
    """One-shot: SOURCE [shipped, size at start) in batch-size appends.

    The reader fills one reused buffer with the next chunk while the current
    body is on the wire; the sender copies it out (the body httpx needs) only
    when the previous append is done.  So at most two chunks are in memory:
    the buffer and the body in flight.
    """
    end, size = source.size or 0, shipper.opts.batch_bytes
    buf = bytearray(min(size, end - shipper.shipped))
    view = memoryview(buf)
    filled_in, filled_out = trio.open_memory_channel[int](0)  # "buffer[:n] holds the next chunk"
    taken_in, taken_out = trio.open_memory_channel[None](0)  # "the buffer may be overwritten"

    async def read_ahead() -> None:
        offset = shipper.shipped
        async with filled_in:
            while offset < end:
                want = min(size, end - offset)
                got = await trio.to_thread.run_sync(_read_exact, source.fd, view[:want], offset)
                if got < want:
                    raise Failure(f"{source.name} shrank to {offset + got} bytes while being read "
                                  f"(it had {end}); {shipper.opts.url} holds its first {offset} bytes")
                await filled_in.send(got)
                await taken_out.receive()
                offset += got

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_ahead)
        async with filled_out:
            while (got := await shipper.next_item(filled_out)) is not None:
                assert isinstance(got, int)
                body = await trio.to_thread.run_sync(_encode, codec, view[:got])
                await taken_in.send(None)
                await shipper.send(body, shipper.shipped + got)
                del body  # before the next copy: two chunks in memory, not three
        nursery.cancel_scope.cancel()


async def ship_batches(shipper: Shipper, batches: trio.MemoryReceiveChannel[Batch], codec: Codec,
                       budget: ReadAheadBudget | None) -> None:
    """Streaming modes: one append per batch, in order, until the batches end or a stop."""
    async with batches:
        while (batch := await shipper.next_item(batches)) is not None:
            assert isinstance(batch, Batch)
            body = batch.body()
            if not isinstance(codec, Identity):
                body = await trio.to_thread.run_sync(codec.encode, body)
            await shipper.send(body, shipper.shipped + batch.size)
            if budget is not None:
                budget.release(batch.size)


async def follow_file(shipper: Shipper, source: Source, codec: Codec) -> None:
    """--follow: tailers (one after another if the path vanishes and comes back) → batcher → writer."""
    opts = shipper.opts
    budget = ReadAheadBudget(2 * max(opts.batch_bytes, READ_SIZE))
    chunks_in, chunks_out = trio.open_memory_channel[Chunk](0)
    batches_in, batches_out = trio.open_memory_channel[Batch](0)
    current: list[Tailer] = []
    poke_every = min(max(opts.flush_interval / 4, 0.01), 0.25)

    async def tail_forever() -> None:
        start = StartAt(offset=shipper.shipped, identity=source.identity)
        async with chunks_in:
            while True:
                tailer = Tailer("source", opts.source, chunks_in.clone(), budget, start=start,
                                chunk_size=min(opts.batch_bytes, READ_SIZE), partial_line_timeout=opts.flush_interval)
                current[:] = [tailer]
                await tailer.run()
                log.info("source_gone", path=opts.source)
                current.clear()
                while not os.path.exists(opts.source):  # tail -F: wait for the path to come back
                    await trio.sleep(poke_every)
                start = BEGINNING

    async def poke_forever() -> None:  # a stat per poke: cheap, and works where inotify does not
        while True:
            await trio.sleep(poke_every)
            for tailer in current:
                tailer.poke()

    source.close()  # the tailer opens the path itself (and finds the file we checked by its identity)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tail_forever)
        nursery.start_soon(poke_forever)
        nursery.start_soon(run_batcher, chunks_out, batches_in, BatchRules(opts.batch_bytes, opts.flush_interval / 2))
        await ship_batches(shipper, batches_out, codec, budget)
        nursery.cancel_scope.cancel()


async def ship_stdin(shipper: Shipper, source: Source, codec: Codec) -> None:
    """stdin: chunks as they come, batched on bytes or age, until EOF."""
    opts = shipper.opts
    chunks_in, chunks_out = trio.open_memory_channel[Chunk](0)
    batches_in, batches_out = trio.open_memory_channel[Batch](0)

    async def read_stdin() -> None:
        buf, offset = bytearray(min(opts.batch_bytes, READ_SIZE)), shipper.shipped
        async with chunks_in:
            while data := await trio.to_thread.run_sync(_read_some, source.fd, buf, abandon_on_cancel=True):
                await chunks_in.send(Chunk("stdin", 1, STDIN_IDENTITY, offset, data))
                offset += len(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_stdin)
        nursery.start_soon(run_batcher, chunks_out, batches_in, BatchRules(opts.batch_bytes, opts.flush_interval / 2))
        await ship_batches(shipper, batches_out, codec, None)
        nursery.cancel_scope.cancel()


# -- the command -------------------------------------------------------------------


@dataclass
class Status:
    """What the command was doing, for the one-line message when it stops."""

    phase: str = "starting"
    shipper: Shipper | None = None


async def run(opts: Options, status: Status) -> int:
    stopper, work = Stopper(), trio.CancelScope()
    source = Source(opts)
    codec: Codec = GzipMembers() if opts.compress == "gzip" else Identity()
    try:
        async with open_s3(opts) as (client, admin), trio.open_nursery() as nursery:
            nursery.start_soon(watch_signals, stopper, work)
            with work:
                if opts.create_bucket:
                    status.phase = "creating the bucket"
                    await admin.create_bucket(opts.bucket)
                writer = ObjectWriter(client, opts.bucket, opts.key, retry=ONE_SHOT_RETRY,
                                      s3express=bool(_DIRECTORY_BUCKET.fullmatch(opts.bucket)))
                status.phase = "checking the object"
                start = await resume_point(client, writer, opts, source)
                total = None if opts.follow or source.size is None else source.size
                progress = ProgressBar(sys.stderr, total, start=start, enabled=sys.stderr.isatty() and not opts.quiet)
                shipper = status.shipper = Shipper(opts, writer, progress, stopper, start)
                status.phase = "appending"
                log.info("shipping", object=opts.url, source=opts.source, source_offset=start, total=total)
                try:
                    if opts.follow:
                        writer.retry = FOLLOW_RETRY
                        await follow_file(shipper, source, codec)
                    elif source.size is None:
                        await ship_stdin(shipper, source, codec)
                    else:
                        await ship_file(shipper, source, codec)
                        if writer.offset == 0:  # an empty SOURCE still makes an (empty) object
                            await client.append(opts.bucket, opts.key, 0, b"")
                finally:
                    progress.close()
            nursery.cancel_scope.cancel()
    finally:
        source.close()
    if stopper.signum is not None:
        return 128 + stopper.signum
    log.info("shipped", object=opts.url, source_offset=status.shipper.shipped if status.shipper else 0)
    return 0


def describe(exc: BaseException, opts: Options, status: Status) -> str:
    """The one line that says what failed: object, offset, server error code."""
    if isinstance(exc, Failure):
        return str(exc)
    shipper = status.shipper
    where = opts.url
    if shipper is not None and shipper.writer.offset is not None:
        where += f" at offset {shipper.writer.offset}"
    if isinstance(exc, ConflictError):
        text = f"conflict: {exc}; nothing was overwritten"
    elif isinstance(exc, NotFoundError) and exc.code == "NoSuchBucket":
        text = f"{exc} (use --create-bucket to create it)"
    elif isinstance(exc, TransportError):
        text = f"no answer from the endpoint: {exc}"
    elif isinstance(exc, (SinkError, OSError)):
        text = str(exc)
    else:
        text = f"internal error {type(exc).__name__}: {exc} (run with --log-level debug for details)"
    return f"{where}: {status.phase} failed: {text}".replace("\n", " ")


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside trio's exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)] or list(exc.exceptions)
        exc = inner[0]
    return exc


def interrupted_hint(opts: Options, status: Status, signum: int) -> str:
    shipped = status.shipper.shipped if status.shipper else 0
    name = signal.Signals(signum).name
    return f"{PROG}: interrupted by {name} after {shipped} bytes of {opts.source}; resume with the same command"


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.log_level is None:  # quiet by default: failures are one line, progress is the bar
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))
    else:
        configure_logging(opts.log_format, opts.log_level)
    status = Status()
    try:
        code = trio.run(run, opts, status)
    except BaseException as exc:  # noqa: BLE001 - every error becomes one line and an exit status
        leaf = _leaf(exc)
        if isinstance(leaf, KeyboardInterrupt):
            print(interrupted_hint(opts, status, signal.SIGINT), file=sys.stderr)
            return 128 + signal.SIGINT
        if isinstance(leaf, SystemExit):
            raise
        log.error("command_failed", error=str(leaf), phase=status.phase, exc_info=leaf)
        print(f"{PROG}: {describe(leaf, opts, status)}", file=sys.stderr)
        return EXIT_FAILED
    if code >= 128:
        print(interrupted_hint(opts, status, code - 128), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
