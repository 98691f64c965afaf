"""The group committer's two stages: a batch's data is written and flushed while
the batch before it is still committing to the index, and nothing is
acknowledged before both stages are done with it.  (A small append's bytes are
flushed after its commit instead: test_unflushed_appends.py.)"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from server.commit_jobs import CommitJob
from server.storage import ObjectInfo, Storage, open_storage


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


@pytest.fixture(params=[True, False], ids=["fsync", "nofsync"])
async def storage(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    async with open_storage(tmp_path / "data", fsync=request.param) as opened:
        await opened.create_bucket("b")
        yield opened


def data_file_sizes(storage: Storage) -> list[int]:
    return sorted(p.stat().st_size for p in (storage.data_dir / "objects").glob("*/*"))


async def test_a_batch_is_flushed_while_the_one_before_commits_to_the_index(storage: Storage) -> None:
    await storage.write_object("b", "k", body(b"first"), offset=0)
    indexing, release = threading.Event(), threading.Event()

    def slow_index_step(conn: object) -> None:  # runs in the indexer, holding it
        indexing.set()
        release.wait(60)  # longer than the deadline below: only the test lets it go

    appended: list[ObjectInfo] = []

    async def append() -> None:  # a new object: its data is flushed before its commit
        appended.append(await storage.write_object("b", "k2", body(b"second"), offset=0))

    files = storage._committer._files
    sync_writes, flushed = files.sync_writes, threading.Event()

    def sync_and_tell(written: list) -> None:  # the flusher's flush, and an event the test can wait on
        sync_writes(written)
        flushed.set()

    files.sync_writes = sync_and_tell  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(storage._committer.run, CommitJob(apply=slow_index_step))
        assert await trio.to_thread.run_sync(indexing.wait, 10)
        nursery.start_soon(append)
        try:
            assert await trio.to_thread.run_sync(flushed.wait, 10)  # the append's batch, while the indexer is held
            assert data_file_sizes(storage) == [5, 6]
            assert not appended  # written and flushed, not acknowledged: its index commit waits
        finally:
            release.set()
    assert appended[0].size == 6
    async with storage.open_reader("b", "k2") as reader:
        assert b"".join([chunk async for chunk in reader.stream()]) == b"second"
