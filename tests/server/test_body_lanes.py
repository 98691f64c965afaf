"""A large body's pieces go to worker threads that keep going while pieces are queued (bodies._Lane):
at most AHEAD wait, in order, and a failure in a thread fails the write with nothing landed."""

from __future__ import annotations

import errno
import os
import resource
import signal
import threading
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from server.bodies import AHEAD, _Lane
from server.records import MiB
from server.storage import open_storage


async def test_a_lane_runs_pieces_in_order_and_holds_at_most_AHEAD() -> None:
    release = threading.Event()
    done: list[int] = []

    def work(piece: list[bytes]) -> None:
        assert release.wait(10)
        done.append(piece[0][0])

    lane = _Lane(work)
    extra_put = False

    async def one_more() -> None:
        nonlocal extra_put
        await lane.put([bytes([AHEAD])])
        extra_put = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.to_thread.run_sync, lane.run))
        for n in range(AHEAD):  # the first is in work, blocked; the others wait in the queue
            await lane.put([bytes([n])])
        nursery.start_soon(one_more)
        await trio.testing.wait_all_tasks_blocked()
        assert not extra_put  # AHEAD pieces queued: the event loop waits for room
        release.set()
        with trio.fail_after(10):
            while not extra_put:
                await trio.testing.wait_all_tasks_blocked()
        lane.end()
    lane.raise_failure()
    assert done == list(range(AHEAD + 1))


async def test_a_failed_piece_skips_the_rest_and_is_raised() -> None:
    done: list[int] = []

    def work(piece: list[bytes]) -> None:
        if piece[0] == b"1":
            raise OSError(errno.EIO, "the disk said no")
        done.append(int(piece[0]))

    lane = _Lane(work)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.to_thread.run_sync, lane.run))
        for n in range(3):
            await lane.put([str(n).encode()])
        lane.end()
    assert done == [0]  # 2 came after the failure: skipped
    with pytest.raises(OSError, match="the disk said no"):
        lane.raise_failure()
    with pytest.raises(OSError, match="the disk said no"):
        await lane.put([b"3"])  # the event loop learns of it at its next hand-over


async def _pieces(data: bytes, size: int = 256 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await trio.lowlevel.checkpoint()


async def test_a_write_failing_in_the_worker_thread_lands_nothing(tmp_path: Path) -> None:
    """A real failed write: past RLIMIT_FSIZE, pwritev fails with EFBIG in the lane's thread."""
    async with open_storage(tmp_path / "data") as storage:
        await storage.create_bucket("b")
        first = os.urandom(MiB)
        await storage.write_object("b", "k", _pieces(first), offset=0)
        data_file = next(p for p in (tmp_path / "data" / "objects").rglob("*") if p.is_file())
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 * MiB, limit[1]))
        try:
            with pytest.raises(OSError) as failed:
                await storage.write_object("b", "k", _pieces(os.urandom(8 * MiB)), offset=MiB)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limit)
            signal.signal(signal.SIGXFSZ, ignored)
        assert failed.value.errno == errno.EFBIG
        assert data_file.stat().st_size == MiB  # put back
        assert (await storage.head_object("b", "k")).size == MiB
        second = os.urandom(3 * MiB)
        await storage.write_object("b", "k", _pieces(second), offset=MiB)  # the object takes appends again
        async with storage.open_reader("b", "k") as reader:
            assert b"".join([piece async for piece in reader.stream()]) == first + second
