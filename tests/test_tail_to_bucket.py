"""tail-to-bucket end to end: the command as a subprocess against the real server.

Progress is observed through the command's own JSON log events on its stderr
pipe (``--log-level info --log-format json``), never by sleeping or polling:
``Running.wait_event`` reads lines until one matches, under ``trio.fail_after``.
"""

from __future__ import annotations

import gzip
import io
import zlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import trio

from agent.progress import ProgressBar, RateMeter, human_bytes, human_duration, render
from agent.tail_source import VERIFY_WINDOW, GzipMembersCounter
from tests.support import REPO, client_env

MiB = 1024 * 1024
CMD = [sys.executable, "-m", "agent.tail_to_bucket"]
LOGS = ["--log-level", "info", "--log-format", "json"]
DEADLINE = 30.0


class Running:
    """One tail-to-bucket process; its stderr lines (JSON events, and the final message) as they arrive."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._buffer = b""
        self._cursor = 0

    async def _read_more(self) -> bool:
        assert self.proc.stderr is not None
        data = await self.proc.stderr.receive_some(1 << 16)
        if not data:
            if self._buffer:
                self.lines.append(self._buffer.decode())
                self._buffer = b""
            return False
        *complete, self._buffer = (self._buffer + data).split(b"\n")
        self.lines += [line.decode() for line in complete]
        return True

    async def wait_event(self, predicate: Callable[[dict], bool], timeout: float = DEADLINE) -> dict:
        """The next event (after the last one returned) that matches ``predicate``."""
        with trio.fail_after(timeout):
            while True:
                while self._cursor < len(self.lines):
                    event = parse_event(self.lines[self._cursor])
                    self._cursor += 1
                    if event is not None and predicate(event):
                        return event
                if not await self._read_more():
                    raise AssertionError(f"exited ({await self.proc.wait()}) before the event: {self.lines[-5:]}")

    async def shipped(self, object_length: int) -> dict:
        """Wait until the object is acknowledged at ``object_length`` bytes."""
        return await self.wait_event(lambda e: e["event"] == "chunk_shipped" and e["object_length"] >= object_length)

    async def finish(self, timeout: float = DEADLINE) -> int:
        """Read stderr to its end and return the exit status."""
        with trio.fail_after(timeout):
            while await self._read_more():
                pass
            return await self.proc.wait()

    def events(self) -> list[dict]:
        return [e for e in map(parse_event, self.lines) if e is not None]

    def messages(self) -> list[str]:
        """The lines that are not log events: what a person reads."""
        return [line for line in self.lines if line.strip() and parse_event(line) is None]


def parse_event(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


@pytest.fixture
async def launch(server) -> AsyncIterator[Callable[..., trio.Process]]:
    """Start the command (endpoint: the session server unless ``url`` is given); killed at teardown."""
    started: list[trio.Process] = []

    async def start(*args: str, url: str | None = None, env: dict[str, str] | None = None,
                    stdin: int | None = subprocess.DEVNULL) -> Running:
        environment = client_env(AWS_ENDPOINT_URL=url or server.url, **(env or {}))
        proc = await trio.lowlevel.open_process([*CMD, *args], cwd=REPO, env=environment, stdin=stdin,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        started.append(proc)
        return Running(proc)

    yield start
    for proc in started:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        if proc.stdin is not None:
            await proc.stdin.aclose()
        if proc.stderr is not None:
            await proc.stderr.aclose()


async def run_command(launch, *args: str, **kw) -> Running:
    running = await launch(*args, **kw)
    await running.finish()
    return running


async def get_object(s3, bucket: str, key: str) -> bytes:
    return await trio.to_thread.run_sync(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def lines(prefix: str, count: int, start: int = 0) -> bytes:
    return b"".join(b"%s line %06d %s\n" % (prefix.encode(), i, b"x" * (i % 50)) for i in range(start, start + count))


def append_to(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


# -- one-shot --------------------------------------------------------------------


async def test_exact_copy_then_rerun_sends_nothing(launch, s3, bucket, tmp_path) -> None:
    source = tmp_path / "app.log"
    source.write_bytes(os.urandom(3 * MiB + 123))
    first = await run_command(launch, "--batch-bytes", "1MiB", *LOGS, str(source), f"s3://{bucket}/app.log")
    assert first.proc.returncode == 0, first.lines[-3:]
    assert await get_object(s3, bucket, "app.log") == source.read_bytes()
    assert [e["body"] for e in first.events() if e["event"] == "chunk_shipped"] == [MiB, MiB, MiB, 123]
    etag = s3.head_object(Bucket=bucket, Key="app.log")["ETag"]
    again = await run_command(launch, *LOGS, str(source), f"s3://{bucket}/app.log")
    assert again.proc.returncode == 0
    assert not [e for e in again.events() if e["event"] == "chunk_shipped"]
    assert s3.head_object(Bucket=bucket, Key="app.log")["ETag"] == etag


async def test_empty_file_makes_an_empty_object(launch, s3, bucket, tmp_path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    done = await run_command(launch, str(tmp_path / "empty"), f"s3://{bucket}/empty")
    assert done.proc.returncode == 0 and done.lines == []
    assert s3.head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0


@pytest.mark.slow
async def test_resume_after_repeated_kill_9(launch, s3, bucket, tmp_path) -> None:
    """kill -9 three times in the middle of a 96 MiB upload; each run resumes where the object ends."""
    source = tmp_path / "big.log"
    with open(source, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(MiB))
    args = ["--batch-bytes", "2MiB", *LOGS, str(source), f"s3://{bucket}/big.log"]
    acknowledged = 0
    for threshold in (10 * MiB, 35 * MiB, 60 * MiB):
        running = await launch(*args)
        start = await running.wait_event(lambda e: e["event"] == "shipping")
        assert start["source_offset"] >= acknowledged  # resumed, never restarted from 0
        acknowledged = (await running.shipped(threshold))["object_length"]
        running.proc.kill()
        assert await running.finish() == -signal.SIGKILL
        # The object holds at least what was acknowledged, and only the file's bytes.
        length = s3.head_object(Bucket=bucket, Key="big.log")["ContentLength"]
        assert length >= acknowledged
    final = await run_command(launch, *args)
    assert final.proc.returncode == 0, final.lines[-3:]
    assert [e for e in final.events() if e["event"] == "shipping"][0]["source_offset"] >= acknowledged
    assert await get_object(s3, bucket, "big.log") == source.read_bytes()


async def test_ctrl_c_finishes_the_append_in_flight_and_exits_130(launch, s3, bucket, tmp_path) -> None:
    source = tmp_path / "big.log"
    source.write_bytes(os.urandom(48 * MiB))
    args = ["--batch-bytes", "1MiB", *LOGS, str(source), f"s3://{bucket}/big.log"]
    running = await launch(*args)
    await running.shipped(2 * MiB)
    running.proc.send_signal(signal.SIGINT)
    assert await running.finish() == 130
    [hint] = running.messages()
    assert "interrupted by SIGINT" in hint and "resume with the same command" in hint
    last = [e for e in running.events() if e["event"] == "chunk_shipped"][-1]["object_length"]
    stored = await get_object(s3, bucket, "big.log")
    assert len(stored) == last < 48 * MiB and source.read_bytes().startswith(stored)  # stopped, nothing torn
    assert (await run_command(launch, *args)).proc.returncode == 0
    assert await get_object(s3, bucket, "big.log") == source.read_bytes()


async def test_object_that_is_not_the_files_prefix_is_refused(launch, s3, bucket, tmp_path) -> None:
    source = tmp_path / "app.log"
    source.write_bytes(lines("first", 200))
    assert (await run_command(launch, str(source), f"s3://{bucket}/app.log")).proc.returncode == 0
    shipped = source.read_bytes()
    # A second writer appends to the object; then the file grows.
    s3.put_object(Bucket=bucket, Key="app.log", Body=b"FOREIGN\n", WriteOffsetBytes=len(shipped))
    append_to(source, lines("second", 200))
    refused = await run_command(launch, str(source), f"s3://{bucket}/app.log")
    assert refused.proc.returncode == 1
    assert len(refused.lines) == 1 and refused.lines[0].startswith("tail-to-bucket: ")
    assert "not a prefix" in refused.lines[0] and f"s3://{bucket}/app.log" in refused.lines[0]
    assert await get_object(s3, bucket, "app.log") == shipped + b"FOREIGN\n"


async def test_object_longer_than_the_file_is_refused(launch, s3, bucket, tmp_path) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789" * 10)
    (tmp_path / "short").write_bytes(b"0123456789")
    refused = await run_command(launch, str(tmp_path / "short"), f"s3://{bucket}/k")
    assert refused.proc.returncode == 1 and len(refused.lines) == 1
    assert "shorter" in refused.lines[0]
    assert await get_object(s3, bucket, "k") == b"0123456789" * 10


async def test_wrong_secret_is_one_clear_line(launch, bucket, tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"hello\n")
    failed = await run_command(launch, str(tmp_path / "f"), f"s3://{bucket}/f", env={"AWS_SECRET_ACCESS_KEY": "wrong"})
    assert failed.proc.returncode == 1
    assert len(failed.lines) == 1
    assert "SignatureDoesNotMatch" in failed.lines[0] and "secret access key" in failed.lines[0]


async def test_missing_bucket_suggests_create_bucket_which_works(launch, s3, tmp_path) -> None:
    (tmp_path / "f").write_bytes(b"hello\n")
    failed = await run_command(launch, str(tmp_path / "f"), "s3://tb-no-such-bucket/f")
    assert failed.proc.returncode == 1 and len(failed.lines) == 1
    assert "NoSuchBucket" in failed.lines[0] and "--create-bucket" in failed.lines[0]
    made = await run_command(launch, "--create-bucket", str(tmp_path / "f"), "s3://tb-made-by-command/f")
    assert made.proc.returncode == 0
    assert await get_object(s3, "tb-made-by-command", "f") == b"hello\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ([], "required"),
        (["f"], "required"),
        (["f", "bucket/key"], "s3://BUCKET/KEY"),
        (["f", "s3://bucket"], "bucket and a key"),
        (["f", "s3:///key"], "bucket and a key"),
        (["--batch-bytes", "0", "f", "s3://b/k"], "--batch-bytes"),
        (["--batch-bytes", "lots", "f", "s3://b/k"], "not a size"),
        (["--flush-interval", "soon", "f", "s3://b/k"], "not a duration"),
        (["--compress", "zstd", "f", "s3://b/k"], "invalid choice"),
        (["--addressing", "dns", "f", "s3://b/k"], "invalid choice"),
        (["--endpoint-url", "ftp://x", "f", "s3://b/k"], "endpoint URL"),
        (["-f", "-", "s3://b/k"], "--follow needs a file"),
        (["--no-such-option", "f", "s3://b/k"], "unrecognized"),
    ],
)
async def test_usage_errors_exit_2_with_one_line(launch, args, says) -> None:
    done = await run_command(launch, *args)
    assert done.proc.returncode == 2
    assert len(done.lines) == 1 and done.lines[0].startswith("tail-to-bucket: error: "), done.lines
    assert says in done.lines[0]


async def test_help_shows_examples() -> None:
    shown = await trio.run_process([*CMD, "--help"], cwd=REPO, capture_stdout=True)
    text = shown.stdout.decode()
    assert "examples:" in text and "tail-to-bucket -f" in text and "--flush-interval" in text


async def test_gzip_members_resume_and_decompress(launch, s3, bucket, tmp_path) -> None:
    source = tmp_path / "app.log"
    source.write_bytes(lines("gz", 30000))
    key = f"s3://{bucket}/app.log.gz"
    assert (await run_command(launch, "--compress", "gzip", "--batch-bytes", "256KiB", str(source), key)).proc.returncode == 0
    append_to(source, lines("more", 20000))
    resumed = await run_command(launch, *LOGS, "--compress", "gzip", "--batch-bytes", "256KiB", str(source), key)
    assert resumed.proc.returncode == 0
    first_size = len(lines("gz", 30000))
    assert [e for e in resumed.events() if e["event"] == "shipping"][0]["source_offset"] == first_size
    stored = await get_object(s3, bucket, "app.log.gz")
    assert len(stored) < len(source.read_bytes()) / 3
    unzipped = await trio.run_process(["gzip", "-dc"], stdin=stored, capture_stdout=True)
    assert unzipped.stdout == source.read_bytes()


async def test_stdin_is_shipped_and_resumed(launch, s3, bucket) -> None:
    data = lines("stdin", 20000)
    for given in (data[: len(data) // 2], data):  # the second run skips what the object holds
        running = await launch(*LOGS, "-", f"s3://{bucket}/piped", stdin=subprocess.PIPE)
        assert running.proc.stdin is not None
        await running.proc.stdin.send_all(given)
        await running.proc.stdin.aclose()
        assert await running.finish() == 0, running.lines[-3:]
    assert await get_object(s3, bucket, "piped") == data


# -- --follow --------------------------------------------------------------------


async def test_follow_through_rotation_and_truncation(launch, s3, bucket, tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(lines("a", 100))
    running = await launch("-f", "--flush-interval", "100ms", *LOGS, str(log), f"s3://{bucket}/app.log")
    written = log.read_bytes()
    await running.shipped(len(written))
    # Rotation by rename + create; the old file gets a last line after the rename.
    log.rename(tmp_path / "app.log.1")
    append_to(tmp_path / "app.log.1", b"a last line, written after the rename\n")
    log.write_bytes(lines("b", 300))
    written += b"a last line, written after the rename\n" + lines("b", 300)
    await running.shipped(len(written))
    # copytruncate: the file is cut to zero and written again from the start.
    with open(log, "r+b") as f:
        f.truncate(0)
    append_to(log, lines("c", 50))
    written += lines("c", 50)
    await running.shipped(len(written))
    running.proc.send_signal(signal.SIGTERM)
    assert await running.finish() == 128 + signal.SIGTERM
    assert await get_object(s3, bucket, "app.log") == written


async def test_follow_catches_up_after_server_restart(launch, make_server, tmp_path) -> None:
    import boto3

    from tests.support import ACCESS_KEY, REGION, SECRET_KEY

    private = make_server()
    s3 = boto3.client("s3", endpoint_url=private.url, aws_access_key_id=ACCESS_KEY,
                      aws_secret_access_key=SECRET_KEY, region_name=REGION)
    log = tmp_path / "app.log"
    log.write_bytes(lines("before", 500))
    running = await launch("-f", "--create-bucket", *LOGS, str(log), "s3://restarts/app.log", url=private.url)
    await running.shipped(log.stat().st_size)
    await trio.to_thread.run_sync(private.kill)
    append_to(log, lines("while-down", 500))
    await trio.to_thread.run_sync(private.restart)
    append_to(log, lines("after", 500))
    await running.shipped(log.stat().st_size)
    running.proc.send_signal(signal.SIGTERM)
    assert await running.finish() == 128 + signal.SIGTERM
    assert await get_object(s3, "restarts", "app.log") == log.read_bytes()


async def test_foreign_append_during_follow_stops_with_a_conflict(launch, s3, bucket, tmp_path) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(lines("ours", 100))
    running = await launch("-f", *LOGS, str(log), f"s3://{bucket}/app.log")
    first = log.read_bytes()
    await running.shipped(len(first))
    s3.put_object(Bucket=bucket, Key="app.log", Body=b"FOREIGN\n", WriteOffsetBytes=len(first))
    append_to(log, lines("more", 100))
    assert await running.finish() == 1
    [message] = running.messages()
    assert message.startswith("tail-to-bucket: ") and "conflict" in message
    assert f"offset {len(first)}" in message and "nothing was overwritten" in message
    assert await get_object(s3, bucket, "app.log") == first + b"FOREIGN\n"


async def test_sigterm_during_follow_leaves_a_prefix_and_resumes(launch, s3, bucket, tmp_path) -> None:
    log = tmp_path / "busy.log"
    log.write_bytes(b"")
    running = await launch("-f", "--flush-interval", "50ms", *LOGS, str(log), f"s3://{bucket}/busy.log")
    written = 0
    for i in range(3):  # the writer keeps writing while the command ships
        append_to(log, lines(f"burst{i}", 2000))
        written = log.stat().st_size
        await running.shipped(written)
    append_to(log, lines("unshipped", 5000))  # likely still in flight when the signal lands
    running.proc.send_signal(signal.SIGTERM)
    assert await running.finish() == 128 + signal.SIGTERM
    assert "resume with the same command" in running.messages()[-1]
    stored = await get_object(s3, bucket, "busy.log")
    assert len(stored) >= written and log.read_bytes().startswith(stored)
    rest = await run_command(launch, str(log), f"s3://{bucket}/busy.log")
    assert rest.proc.returncode == 0
    assert await get_object(s3, bucket, "busy.log") == log.read_bytes()


async def test_s3express_sessions_renewed_after_server_restart(launch, make_server, tmp_path) -> None:
    """A directory bucket name switches to CreateSession auth; a restart forgets sessions and the sink renews."""
    private = make_server()
    bucket = "tbx--use1-az4--x-s3"
    log = tmp_path / "app.log"
    log.write_bytes(lines("express", 300))
    running = await launch("-f", "--create-bucket", *LOGS, str(log), f"s3://{bucket}/app.log", url=private.url)
    await running.shipped(log.stat().st_size)
    await trio.to_thread.run_sync(private.kill)
    await trio.to_thread.run_sync(private.restart)
    append_to(log, lines("renewed", 300))
    await running.shipped(log.stat().st_size)
    running.proc.send_signal(signal.SIGTERM)
    assert await running.finish() == 128 + signal.SIGTERM
    assert len([e for e in running.events() if e["event"] == "session_created"]) >= 2
    check = await run_command(launch, *LOGS, str(log), f"s3://{bucket}/app.log", url=private.url)
    assert check.proc.returncode == 0  # the object is the file: nothing more to send
    assert not [e for e in check.events() if e["event"] == "chunk_shipped"]


# -- the progress line (pure) -------------------------------------------------------


def test_progress_formatting() -> None:
    assert human_bytes(0) == "0 B" and human_bytes(1536) == "1.5 KiB" and human_bytes(3 * MiB) == "3 MiB"
    assert human_duration(75) == "1:15" and human_duration(3725) == "1:02:05"
    assert human_duration(float("inf")) == "--:--"
    line = render(MiB, 4 * MiB, 1.5 * MiB, width=8)
    assert line.startswith("[##------]  25.0%") and "1 MiB / 4 MiB" in line and "ETA 0:02" in line
    assert render(5 * MiB, None, MiB) == "5 MiB shipped  1 MiB/s"


def test_rate_meter_uses_a_sliding_window() -> None:
    meter = RateMeter(window=2.0)
    assert meter.add(0.0, 0) == 0.0
    assert meter.add(1.0, 100) == 100.0
    meter.add(2.0, 200)
    assert meter.add(4.0, 1000) == pytest.approx((1000 - 200) / 2.0)


def test_progress_bar_is_throttled_and_silent_when_disabled() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = ProgressBar(out, 100, enabled=True, interval=1.0, clock=lambda: now[0])
    for step in range(1, 11):
        now[0] = step * 0.25
        bar.update(step * 10)
    bar.close()
    assert out.getvalue().count("\r") == 3 + 1  # at t = 0.25, 1.25, 2.25, and the final state
    assert out.getvalue().endswith("\n") and "100.0%" in out.getvalue()
    quiet = io.StringIO()
    silent = ProgressBar(quiet, 100, enabled=False)
    silent.update(50)
    silent.close()
    assert quiet.getvalue() == ""


# -- counting SOURCE bytes in gzip members (pure) -------------------------------------


def test_gzip_members_counter_counts_and_keeps_the_tail() -> None:
    data = os.urandom(100_000) + b"x" * 5_000_000  # the second member expands a lot: output is bounded per step
    blob = gzip.compress(data[:3000], mtime=0) + gzip.compress(data[3000:], mtime=0) + gzip.compress(b"end\n", mtime=0)
    counter = GzipMembersCounter()
    for i in range(0, len(blob), 7777):
        counter.feed(blob[i : i + 7777])
    assert counter.count == len(data) + 4 and not counter.inside_member
    assert counter.tail == (data + b"end\n")[-VERIFY_WINDOW:]
    torn = GzipMembersCounter()
    torn.feed(blob[:-5])
    assert torn.inside_member
    with pytest.raises(zlib.error):
        GzipMembersCounter().feed(b"plain text, not gzip")
