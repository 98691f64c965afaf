"""Small appends: one device flush after the index commit covers the commit and
the appended bytes, and start-up recovery puts back a commit whose bytes did
not reach the disk.

A power loss between the commit and the flush is simulated by what it can leave
on disk: the committed row, and the data file without the appended bytes, with
some of them, or with zeros where they should be (written after a clean close,
which flushed everything)."""

from __future__ import annotations

import os
import sqlite3
import threading
from functools import partial
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from server import index
from server.committer import UNFLUSHED_MAX
from server.storage import ObjectInfo, Storage, open_storage

FIRST, SECOND = os.urandom(3000), os.urandom(1000)


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def content(storage: Storage, key: str = "k") -> bytes:
    async with storage.open_reader("b", key) as reader:
        return b"".join([chunk async for chunk in reader.stream()])


def data_file(data_dir: Path) -> Path:
    (path,) = (data_dir / "objects").glob("*/*")
    return path


def unflushed(data_dir: Path) -> list[tuple]:
    conn = sqlite3.connect(data_dir / "index.sqlite3")
    try:
        return [row[:2] + row[3:] for row in index.unflushed_appends(conn)]  # without the file id
    finally:
        conn.close()


async def two_appends(data_dir: Path) -> tuple[ObjectInfo, ObjectInfo]:
    """The object FIRST + SECOND, in two appends; (its state after each)."""
    async with open_storage(data_dir) as storage:
        await storage.create_bucket("b")
        await storage.write_object("b", "k", body(FIRST[:1000]), offset=0)
        first = await storage.write_object("b", "k", body(FIRST[1000:]), offset=1000)
        second = await storage.write_object("b", "k", body(SECOND), offset=3000)
    return first, second


async def test_a_small_append_is_acknowledged_after_one_flush_that_follows_its_commit(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "data", commit_process=False) as storage:
        await storage.create_bucket("b")
        await storage.write_object("b", "k", body(b"first"), offset=0)
        committer = storage._committer
        flush, flushing, release = committer._flush_after_commit, threading.Event(), threading.Event()
        data_flushes = []
        sync_writes = storage._files.sync_writes

        def held_flush(writes: list) -> None:  # the flush after the commit, held by the test
            flushing.set()
            release.wait(60)
            flush(writes)

        def counted_sync_writes(writes: list) -> None:
            data_flushes.append(len(writes))
            sync_writes(writes)

        committer._flush_after_commit = held_flush
        storage._files.sync_writes = counted_sync_writes  # type: ignore[method-assign]
        appended: list[ObjectInfo] = []

        async def append() -> None:
            appended.append(await storage.write_object("b", "k", body(b"-second"), offset=5))

        seen: list[int] = []

        async def head() -> None:
            seen.append((await storage.head_object("b", "k")).size)

        async def get() -> None:
            seen.append(len(await content(storage)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append)
            try:
                assert await trio.to_thread.run_sync(flushing.wait, 10)
                conn = sqlite3.connect(storage.data_dir / "index.sqlite3")
                assert conn.execute("SELECT size FROM objects").fetchall() == [(12,)]  # committed...
                conn.close()
                nursery.start_soon(head)
                nursery.start_soon(get)
                await trio.testing.wait_all_tasks_blocked()
                assert not appended  # ...not acknowledged before the flush
                assert storage._unsettled[("b", "k")] is not None  # the readers wait for it
                assert seen == []  # nor reported by a HEAD or a GET
            finally:
                release.set()
        assert appended[0].size == 12
        assert seen == [12, 12]
        assert data_flushes == []  # no flush of the data before the commit
        assert await content(storage) == b"first-second"
    assert [row[:3] for row in unflushed(tmp_path / "data")] == [("b", "k", 12)]


@pytest.mark.parametrize(
    "damage",
    ["missing", "half", "zeros", "short_by_one"],
)
async def test_an_append_whose_bytes_did_not_reach_the_disk_is_rolled_back(tmp_path: Path, damage: str) -> None:
    data_dir = tmp_path / "data"
    first, second = await two_appends(data_dir)
    path = data_file(data_dir)
    if damage == "missing":
        os.truncate(path, 3000)
    elif damage == "half":
        os.truncate(path, 3500)
    elif damage == "short_by_one":
        os.truncate(path, 3999)
    else:  # the size reached the disk, the bytes did not
        with path.open("r+b") as file:
            file.seek(3000)
            file.write(bytes(1000))
    with capture_logs() as logs:
        async with open_storage(data_dir) as storage:
            info = await storage.head_object("b", "k")
            assert info == first  # size, ETag, CRC32, append count, time: as before the lost append
            assert await content(storage) == FIRST
            again = await storage.write_object("b", "k", body(SECOND), offset=3000)
            assert (again.size, again.etag, again.crc32, again.appends) == (4000, second.etag, second.crc32, 3)
            assert await content(storage) == FIRST + SECOND
    rolled = [e for e in logs if e["event"] == "storage_unflushed_append_rolled_back"]
    assert [(e["key"], e["committed"], e["back_to"]) for e in rolled] == [("k", 4000, 3000)]
    (opened,) = [e for e in logs if e["event"] == "storage_opened"]
    assert (opened["verified"], opened["rolled_back"]) == (0, 1)
    assert not any(e["event"] == "storage_object_lost_bytes" for e in logs)  # not damage: never acknowledged


async def test_an_append_whose_bytes_reached_the_disk_stays(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _, second = await two_appends(data_dir)
    with capture_logs() as logs:
        async with open_storage(data_dir) as storage:
            assert await storage.head_object("b", "k") == second
            assert await content(storage) == FIRST + SECOND
    assert not any(e["event"] == "storage_unflushed_append_rolled_back" for e in logs)
    (opened,) = [e for e in logs if e["event"] == "storage_opened"]
    assert (opened["verified"], opened["rolled_back"]) == (1, 0)  # found whole, and flushed before serving
    assert unflushed(data_dir) == []  # on disk now: the next start does not read it again
    with capture_logs() as logs:
        async with open_storage(data_dir) as storage:
            assert await storage.head_object("b", "k") == second
    (opened,) = [e for e in logs if e["event"] == "storage_opened"]
    assert opened["verified"] == 0


async def test_only_the_damaged_object_is_rolled_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with open_storage(data_dir) as storage:
        await storage.create_bucket("b")
        for key, parts in (("x", (b"one", b"+two")), ("y", (b"uno", b"+dos"))):
            await storage.write_object("b", key, body(parts[0]), offset=0)
            await storage.write_object("b", key, body(parts[1]), offset=3)
    (y_file,) = [p for p in (data_dir / "objects").glob("*/*") if p.read_bytes() == b"uno+dos"]
    os.truncate(y_file, 3)
    async with open_storage(data_dir) as storage:
        assert await content(storage, "x") == b"one+two"
        assert await content(storage, "y") == b"uno"


async def test_a_failed_flush_refuses_the_append_and_puts_it_back(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "data", commit_process=False) as storage:
        await storage.create_bucket("b")
        before = await storage.write_object("b", "k", body(b"first"), offset=0)
        flush = storage._committer._flush_after_commit

        def failing_flush(writes: list) -> None:
            raise OSError(5, "Input/output error")

        storage._committer._flush_after_commit = failing_flush
        with pytest.raises(OSError):
            await storage.write_object("b", "k", body(b"-lost"), offset=5)
        assert await storage.head_object("b", "k") == before
        assert data_file(tmp_path / "data").stat().st_size == 5
        storage._committer._flush_after_commit = flush
        assert (await storage.write_object("b", "k", body(b"-second"), offset=5)).size == 12
        assert await content(storage) == b"first-second"


async def test_appends_flushed_before_their_commit_keep_no_previous_state(tmp_path: Path) -> None:
    """A large append (its bytes flushed first) and a plain PUT leave nothing for recovery to read."""
    data_dir = tmp_path / "data"
    async with open_storage(data_dir) as storage:
        await storage.create_bucket("b")
        await storage.write_object("b", "k", body(b"x"), offset=0)
        await storage.write_object("b", "k", body(b"y"), offset=1)
    assert [row[:3] for row in unflushed(data_dir)] == [("b", "k", 2)]
    async with open_storage(data_dir) as storage:
        await storage.write_object("b", "k", body(bytes(UNFLUSHED_MAX + 1)), offset=2)
    assert unflushed(data_dir) == []
    async with open_storage(data_dir) as storage:
        await storage.write_object("b", "k", body(b"z"), offset=UNFLUSHED_MAX + 3)
        await storage.write_object("b", "k", body(b"replaced"), offset=None)
    assert unflushed(data_dir) == []


async def test_without_fsync_appends_keep_no_previous_state(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    async with open_storage(data_dir, fsync=False) as storage:
        await storage.create_bucket("b")
        await storage.write_object("b", "k", body(b"x"), offset=0)
        await storage.write_object("b", "k", body(b"y"), offset=1)
    assert unflushed(data_dir) == []


async def test_a_batch_is_flushed_and_acknowledged_while_the_one_before_still_flushes(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "data", commit_process=False) as storage:
        await storage.create_bucket("b")
        for key in ("x", "y"):
            await storage.write_object("b", key, body(b"one"), offset=0)
        committer = storage._committer
        flush, first_flushing, release = committer._flush_after_commit, threading.Event(), threading.Event()
        calls = []

        def first_held(writes: list) -> None:
            calls.append(len(writes))
            if len(calls) == 1:
                first_flushing.set()
                release.wait(60)
            flush(writes)

        committer._flush_after_commit = first_held
        done: list[str] = []

        async def append(key: str) -> None:
            await storage.write_object("b", key, body(b"+two"), offset=3)
            done.append(key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, "x")
            try:
                assert await trio.to_thread.run_sync(first_flushing.wait, 10)
                with trio.fail_after(10):
                    await append("y")  # committed, flushed and acknowledged by another syncer
                assert done == ["y"]
            finally:
                release.set()
        assert done == ["y", "x"]
        assert [await content(storage, key) for key in ("x", "y")] == [b"one+two", b"one+two"]


async def test_puts_and_small_appends_of_one_turn_land_each_with_its_own_guarantee(tmp_path: Path) -> None:
    """A PUT (flushed before its commit, which must be durable itself) and small appends
    handed over together: each lands; only the appends keep a previous state."""
    data_dir = tmp_path / "data"
    async with open_storage(data_dir) as storage:
        await storage.create_bucket("b")
        for n in range(4):
            await storage.write_object("b", f"a{n}", body(b"one"), offset=0)
        async with trio.open_nursery() as nursery:  # all reach the committer in the same turn
            nursery.start_soon(partial(storage.write_object, "b", "put", body(b"whole"), offset=None))
            for n in range(4):
                nursery.start_soon(partial(storage.write_object, "b", f"a{n}", body(b"+two"), offset=3))
        assert await content(storage, "put") == b"whole"
        assert [await content(storage, f"a{n}") for n in range(4)] == [b"one+two"] * 4
    assert sorted(row[1] for row in unflushed(data_dir)) == ["a0", "a1", "a2", "a3"]
