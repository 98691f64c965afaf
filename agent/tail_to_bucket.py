"""``tail-to-bucket``: ship one file (or stdin) into an S3 object by appending.

This module is the command: options, the S3 client set-up, exit statuses and
the one-line messages.  ``agent.tail_source`` decides where to resume (the
object is the checkpoint: its bytes must be SOURCE's prefix);
``agent.tail_shipping`` moves the bytes (one-shot, ``--follow``, stdin) and
stops cleanly on Ctrl-C / SIGTERM.

Bodies are signed ``UNSIGNED-PAYLOAD`` and carry a CRC32 checksum header
(``sink.protocol``), as the AWS SDKs do for S3 over TLS: no SHA-256 pass over
every byte.  Directory buckets (``NAME--AZID--x-s3``) use S3 Express sessions.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import structlog
import trio

from agent.progress import ProgressBar
from agent.tail_shipping import Shipper, Stopper, follow_file, ship_file, ship_stdin, watch_signals
from agent.tail_source import ONE_SHOT_RETRY, Failure, Options, Source, resume_point
from agent.units import parse_duration, parse_size
from sink.append import ObjectWriter
from sink.client import S3Client
from sink.compress import Codec, GzipMembers, Identity
from sink.credentials import resolve_config
from sink.errors import ConflictError, NotFoundError, SinkError, TransportError
from sink.logs import configure_logging
from sink.plain_http import PlainHTTPTransport
from sink.protocol import Endpoint, aws_endpoint, s3express_endpoint
from sink.retry import RetryPolicy
from sink.session import SESSION_TOKEN_HEADER, SIGNING_SERVICE, S3ExpressSessions
from sink.sigv4 import SigV4Auth

log = structlog.get_logger()

PROG = "tail-to-bucket"
EXIT_FAILED, EXIT_USAGE = 1, 2
MAX_BATCH = 1 << 30
FOLLOW_RETRY = RetryPolicy(base=0.2, cap=2.0, max_attempts=None, max_elapsed=math.inf)  # the file is the buffer
_DIRECTORY_BUCKET = re.compile(r".+--[a-z0-9-]+--x-s3")  # S3 Express One Zone: NAME--AZID--x-s3


def is_directory_bucket(bucket: str) -> bool:
    """Directory buckets authorise object requests with CreateSession keys."""
    return bool(_DIRECTORY_BUCKET.fullmatch(bucket))

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
    express = is_directory_bucket(opts.bucket)
    if cfg.endpoint_url:
        endpoint = Endpoint.parse(cfg.endpoint_url)
    else:
        endpoint = s3express_endpoint(opts.bucket, cfg.region) if express else aws_endpoint(cfg.region)
    keys = SigV4Auth(cfg.access_key_id, cfg.secret_access_key, cfg.region, session_token=cfg.session_token,
                     service=SIGNING_SERVICE if express else "s3", unsigned_payload=True)
    timeout = httpx.Timeout(120.0, connect=15.0)
    # http:// (a server on this host or network): h11 straight on the socket, no CA bundle loaded for
    # nothing, and requests we sign skip httpx's request and response objects (S3Client's direct path).
    transport = PlainHTTPTransport(4) if endpoint.scheme == "http" else None
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=4), transport=transport) as http:
        admin = S3Client(http, endpoint, auth=keys, addressing=opts.addressing, region=cfg.region, direct=transport)
        if not express:
            yield admin, admin
            return

        def session_signer(grant):  # type: ignore[no-untyped-def]
            return SigV4Auth(grant.access_key_id, grant.secret_access_key, cfg.region, service=SIGNING_SERVICE,
                             session_token=grant.session_token, session_token_header=SESSION_TOKEN_HEADER,
                             unsigned_payload=True)

        sessions = S3ExpressSessions(admin, signer=session_signer)
        yield S3Client(http, endpoint, auth=sessions, addressing=opts.addressing, region=cfg.region), admin


# -- the command -------------------------------------------------------------------


@dataclass
class Status:
    """What the command was doing, for the one-line message when it stops."""

    phase: str = "starting"
    shipper: Shipper | None = None


async def run(opts: Options, status: Status) -> int:
    """Ship; return 0, or 128 + the signal that stopped it.  Failures raise."""
    stopper, work = Stopper(), trio.CancelScope()
    source = Source(opts)
    codec: Codec = GzipMembers() if opts.compress == "gzip" else Identity()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, stopper, work)
            with work:
                async with open_s3(opts) as (client, admin):
                    await ship(opts, status, client, admin, source, codec, stopper)
            nursery.cancel_scope.cancel()
    finally:
        source.close()
    if stopper.signum is not None:
        return 128 + stopper.signum
    log.info("shipped", object=opts.url, source_offset=status.shipper.shipped if status.shipper else 0)
    return 0


async def ship(opts: Options, status: Status, client: S3Client, admin: S3Client, source: Source, codec: Codec,
               stopper: Stopper) -> None:
    """Check the object, then ship in the mode the options ask for; ``status`` says where it got."""
    if opts.create_bucket:
        status.phase = "creating the bucket"
        await admin.create_bucket(opts.bucket)
    writer = ObjectWriter(client, opts.bucket, opts.key, retry=ONE_SHOT_RETRY, s3express=is_directory_bucket(opts.bucket))
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
    return (f"{PROG}: interrupted by {name}: {opts.url} holds the first {shipped} bytes of {opts.source}; "
            "resume with the same command")


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
