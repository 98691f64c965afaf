"""Crash safety of storage: start-up recovery, and a real SIGKILL in the middle of appends."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
from structlog.testing import capture_logs

from server.bodies import AHEAD, SPILL_SIZE
from server.storage import Storage, open_storage
from tests.server.crash_appender import BUCKET, KEY

REPO = Path(__file__).resolve().parents[2]
APPENDER = Path(__file__).with_name("crash_appender.py")


async def body(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def content(storage: Storage, bucket: str, key: str) -> bytes:
    async with storage.open_reader(bucket, key) as reader:
        return b"".join([chunk async for chunk in reader.stream()])


def only_data_file(data_dir: Path) -> Path:
    (path,) = (data_dir / "objects").glob("*/*")
    return path


async def make_object(data_dir: Path, data: bytes, appends: int = 1, *, fsync: bool = True) -> None:
    async with open_storage(data_dir, fsync=fsync) as storage:
        await storage.create_bucket("b")
        step = len(data) // appends
        for n in range(appends):
            part = data[n * step :] if n == appends - 1 else data[n * step : (n + 1) * step]
            await storage.write_object("b", "k", body(part), offset=n * step)


# -- recovery ------------------------------------------------------------------------


async def test_uncommitted_tail_is_truncated_at_open(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await make_object(data_dir, b"committed", appends=3)
    path = only_data_file(data_dir)
    with path.open("ab") as file:
        file.write(b" + bytes of an append that never committed")
    with capture_logs() as logs:
        async with open_storage(data_dir) as storage:
            info = await storage.head_object("b", "k")
            assert await content(storage, "b", "k") == b"committed"
            assert (await storage.write_object("b", "k", body(b"!"), offset=9)).size == 10
    assert path.stat().st_size == 10
    assert info.appends == 3
    assert any(e["event"] == "storage_uncommitted_tail_truncated" and e["committed"] == 9 for e in logs)


async def test_unreferenced_files_are_deleted_at_open(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await make_object(data_dir, b"keep")
    orphan = data_dir / "objects" / "ab" / ("ab" + "0" * 30)
    orphan.write_bytes(b"a PUT that never committed")
    foreign = data_dir / "objects" / "ab" / "README"
    foreign.write_bytes(b"not ours")
    async with open_storage(data_dir) as storage:
        assert await content(storage, "b", "k") == b"keep"
    assert not orphan.exists()
    assert foreign.exists()  # not a data file name: logged, left alone


async def test_lost_bytes_clamp_the_object_to_what_is_on_disk(tmp_path: Path) -> None:
    """A data file shorter than committed (power loss with fsync off): the index
    must never point past the end of the file."""
    data_dir = tmp_path / "data"
    data = os.urandom(1000)
    await make_object(data_dir, data, appends=2, fsync=False)  # with fsync, see test_unflushed_appends.py
    os.truncate(only_data_file(data_dir), 600)
    with capture_logs() as logs:
        async with open_storage(data_dir) as storage:
            info = await storage.head_object("b", "k")
            assert await content(storage, "b", "k") == data[:600]
    assert (info.size, info.crc32) == (600, zlib.crc32(data[:600]))
    assert info.etag == hashlib.md5(data[:600]).hexdigest() + "-2"
    assert any(e["event"] == "storage_object_lost_bytes" and e["log_level"] == "error" for e in logs)


async def test_missing_data_file_leaves_an_empty_object(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    await make_object(data_dir, b"gone")
    only_data_file(data_dir).unlink()
    async with open_storage(data_dir) as storage:
        assert (await storage.head_object("b", "k")).size == 0
        assert (await storage.write_object("b", "k", body(b"again"), offset=0)).size == 5


# -- a real crash ----------------------------------------------------------------------


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buffer = b""
    while True:
        chunk = await stream.receive_some()
        if not chunk:
            return
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.decode()


async def _follow_until_mid_append(
    stream: trio.abc.ReceiveStream, committed: list[tuple[int, int, str]]
) -> tuple[int, int, str]:
    """Read the appender's progress, recording acks in ``committed``, until it has
    acknowledged two appends and handed enough of the next body to the storage that
    part of it must be in the data file (all but the last AHEAD pieces handed over
    are); returns that in-flight append."""
    in_flight: tuple[int, int, str] | None = None
    acks = 0
    async with aclosing(_lines(stream)) as lines:
        async for line in lines:
            kind, *fields = line.split()
            if kind == "begin":
                in_flight = (int(fields[0]), int(fields[1]), fields[2])
            elif kind == "ack":
                assert in_flight == (int(fields[0]), int(fields[1]), fields[2])
                committed.append(in_flight)
                in_flight, acks = None, acks + 1
            elif kind == "fed" and acks >= 2 and int(fields[0]) >= (AHEAD + 1) * SPILL_SIZE:
                assert in_flight is not None
                return in_flight
    raise AssertionError("the appender stopped")


@pytest.mark.slow
async def test_sigkill_mid_append_keeps_every_acknowledged_byte(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    committed: list[tuple[int, int, str]] = []  # (offset, length, sha256) of every append that landed
    killed_mid_append = 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for round_ in range(3):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(APPENDER), str(data_dir), str(round_)], stdout=subprocess.PIPE, env=env
        )
        try:
            assert process.stdout is not None
            with trio.fail_after(30):
                in_flight = await _follow_until_mid_append(process.stdout, committed)
        finally:
            process.kill()  # SIGKILL, while the storage holds an uncommitted body
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()
        file_size = only_data_file(data_dir).stat().st_size

        async with open_storage(data_dir) as storage:
            info = await storage.head_object(BUCKET, KEY)
            data = await content(storage, BUCKET, KEY)
        assert only_data_file(data_dir).stat().st_size == info.size  # recovery cut the uncommitted tail
        last_acked_end = committed[-1][0] + committed[-1][1]
        assert info.size in (last_acked_end, in_flight[0] + in_flight[1])
        if info.size > last_acked_end:  # committed, but killed before it could say so
            committed.append(in_flight)
        else:
            killed_mid_append += file_size > info.size
        assert len(data) == info.size == committed[-1][0] + committed[-1][1]
        for offset, length, sha in committed:
            assert hashlib.sha256(data[offset : offset + length]).hexdigest() == sha, (offset, length)
        assert info.crc32 == zlib.crc32(data)
    assert killed_mid_append >= 1  # at least one kill left uncommitted bytes for recovery to cut
