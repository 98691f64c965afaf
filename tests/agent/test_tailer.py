"""The tailer on real files: every byte once, in order, through rotation, truncation, deletion."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import structlog.testing
import trio
import trio.testing

from agent.batcher import Chunk
from agent.tailer import ReadAheadBudget, Tailer, cut_point

DEADLINE = 20  # seconds a test may wait for an event before failing (virtual under MockClock)


async def inline(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a file call in the trio thread, so MockClock virtual time stays exact."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


@pytest.fixture(params=["thread", "inline"])
def run_sync(request: pytest.FixtureRequest) -> Callable[..., Any]:
    return trio.to_thread.run_sync if request.param == "thread" else inline


class Harness:
    """A tailer on ``path`` with a channel whose chunks the test collects."""

    def __init__(self, nursery: trio.Nursery, path: Path, **options: Any) -> None:
        self.nursery = nursery
        self.path = path
        send, self.receive = trio.open_memory_channel[Chunk](options.pop("channel_size", 100))
        self.budget = options.pop("budget", None) or ReadAheadBudget(1 << 20)
        options.setdefault("chunk_size", 4096)
        options.setdefault("partial_line_timeout", 5.0)
        options.setdefault("rotation_grace", 0.0)
        self.tailer = Tailer("s", str(path), send, self.budget, **options)
        self.chunks: list[Chunk] = []
        self.done = trio.Event()

    async def start(self) -> Harness:
        async def run(task_status: trio.TaskStatus[None]) -> None:
            await self.tailer.run(task_status=task_status)
            self.done.set()

        await self.nursery.start(run)  # returns once the file is open
        return self

    async def take(self, size: int) -> bytes:
        """Receive chunks until ``size`` more bytes arrived; return them."""
        got = b""
        with trio.fail_after(DEADLINE):
            while len(got) < size:
                got += self._keep(await self.receive.receive())
        assert len(got) == size, f"received {len(got) - size} bytes too many"
        return got

    def take_ready(self) -> int:
        """Take whatever chunks are waiting right now; return how many bytes."""
        size = 0
        while True:
            try:
                size += len(self._keep(self.receive.receive_nowait()))
            except trio.WouldBlock:
                return size

    @property
    def received(self) -> int:
        return sum(len(c.data) for c in self.chunks)

    def _keep(self, chunk: Chunk) -> bytes:
        self.chunks.append(chunk)
        self.budget.release(len(chunk.data))
        return chunk.data

    def per_generation(self) -> list[tuple[int, int, bytes]]:
        """(generation, first offset, bytes) per generation, checking each is contiguous."""
        out: list[tuple[int, int, bytes]] = []
        for chunk in self.chunks:
            if out and out[-1][0] == chunk.generation:
                generation, first, data = out[-1]
                assert chunk.offset == first + len(data), "gap or overlap inside a generation"
                out[-1] = (generation, first, data + chunk.data)
            else:
                out.append((chunk.generation, chunk.offset, chunk.data))
        return out


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_cut_point_is_after_the_last_newline() -> None:
    buffer = bytearray(b"ab\ncd\nef" + bytes(8))
    assert cut_point(buffer, 0, 8) == 6
    assert cut_point(buffer, 6, 8) == 0  # new bytes hold no newline, buffer not full
    full = bytearray(b"abcdefgh")
    assert cut_point(full, 4, 8) == 8  # full buffer, no newline: all of it


async def test_appends_arrive_in_order_exactly_once(tmp_path: Path, run_sync: Any, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"one\ntw")
    h = await Harness(nursery, path, run_sync=run_sync).start()
    assert await h.take(4) == b"one\n"  # "tw" is held: no newline yet
    append(path, b"o\nthree\nfo")
    h.tailer.poke()
    assert await h.take(10) == b"two\nthree\n"
    append(path, b"ur\n" + b"x" * 5000 + b"\n")
    h.tailer.poke()
    await h.take(5006)
    assert all(c.data.endswith(b"\n") or len(c.data) == 4096 for c in h.chunks)
    assert all(len(c.data) <= 4096 for c in h.chunks)
    [(generation, first, data)] = h.per_generation()
    assert first == 0 and data == path.read_bytes()
    nursery.cancel_scope.cancel()


async def test_rename_rotation_drains_old_file_then_new_from_zero(
    tmp_path: Path, run_sync: Any, nursery: trio.Nursery
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old 1\n")
    h = await Harness(nursery, path, run_sync=run_sync).start()
    await h.take(6)
    rotated = tmp_path / "app.log.1"
    path.rename(rotated)
    late = b"old 2, written before the writer reopened\n"
    append(rotated, late)
    path.write_bytes(b"new 1\n")
    h.tailer.poke()
    await h.take(len(late) + 6)
    old, new = h.per_generation()
    assert (old[1], old[2]) == (0, rotated.read_bytes())
    assert (new[1], new[2]) == (0, b"new 1\n")
    assert h.chunks[-1].identity.ino == path.stat().st_ino
    assert [i.ino for i in h.tailer.files_done] == [rotated.stat().st_ino]
    nursery.cancel_scope.cancel()


async def test_copytruncate_continues_from_zero(tmp_path: Path, run_sync: Any, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"first line of the old content\n")
    h = await Harness(nursery, path, run_sync=run_sync).start()
    await h.take(30)
    with path.open("r+b") as f:
        f.truncate(0)
    append(path, b"new\n")
    h.tailer.poke()
    assert await h.take(4) == b"new\n"
    old, new = h.per_generation()
    assert new[:2] == (new[0], 0) and new[0] != old[0]
    nursery.cancel_scope.cancel()


async def test_truncated_and_regrown_past_offset_is_noticed_by_its_head(
    tmp_path: Path, run_sync: Any, nursery: trio.Nursery
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"a\n")
    h = await Harness(nursery, path, run_sync=run_sync).start()
    await h.take(2)
    path.write_bytes(b"b\nc\nd\n")  # truncate + rewrite: same inode, size above our offset
    h.tailer.poke()
    assert await h.take(6) == b"b\nc\nd\n"
    assert h.chunks[-1].offset == 0
    nursery.cancel_scope.cancel()


async def test_delete_while_open_reads_to_end_then_ends(tmp_path: Path, run_sync: Any, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"a\n")
    h = await Harness(nursery, path, run_sync=run_sync).start()
    await h.take(2)
    with path.open("ab") as writer:  # the writer keeps its fd: bytes written after unlink count too
        path.unlink()
        writer.write(b"b\nunterminated")
    h.tailer.poke()
    assert await h.take(14) == b"b\nunterminated"
    with trio.fail_after(DEADLINE):
        await h.done.wait()
    with pytest.raises(trio.EndOfChannel):
        h.receive.receive_nowait()


async def test_renamed_away_without_successor_keeps_reading(tmp_path: Path, run_sync: Any, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"a\n")
    h = await Harness(nursery, path, run_sync=run_sync).start()
    await h.take(2)
    rotated = tmp_path / "app.log.1"
    path.rename(rotated)
    append(rotated, b"b\n")
    h.tailer.poke()
    assert await h.take(2) == b"b\n"
    assert not h.done.is_set()
    assert len(h.per_generation()) == 1
    nursery.cancel_scope.cancel()


async def test_partial_line_held_until_timeout_exact_virtual_time(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"no newline yet")
    arrivals: list[tuple[float, bytes]] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            h = await Harness(nursery, path, run_sync=inline, partial_line_timeout=5.0).start()
            data = await h.take(14)
            arrivals.append((trio.current_time(), data))
            # A slow writer (virtual time): "ab" at t=6, "c\nde" at t=7.
            await trio.sleep(1)
            append(path, b"ab")
            h.tailer.poke()
            await trio.sleep(1)
            append(path, b"c\nde")
            h.tailer.poke()
            for size in (4, 2):
                data = await h.take(size)
                arrivals.append((trio.current_time(), data))
            nursery.cancel_scope.cancel()

    await main()
    # held 5s from first sight; a newline releases the line at once; "de" waits 5s again
    assert arrivals == [(5.0, b"no newline yet"), (7.0, b"abc\n"), (12.0, b"de")]


async def test_rotation_and_truncation_are_logged_with_context(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"first\n")
    with structlog.testing.capture_logs() as logs:
        h = await Harness(nursery, path, run_sync=inline).start()
        await h.take(6)
        path.write_bytes(b"")  # truncated
        h.tailer.poke()
        await trio.testing.wait_all_tasks_blocked()
        path.rename(tmp_path / "app.log.1")
        path.write_bytes(b"second\n")
        h.tailer.poke()
        await h.take(7)
    events = [(e["event"], e.get("stream"), e.get("path")) for e in logs if e["event"] != "tailer_started"]
    assert events == [("file_truncated", "s", str(path)), ("file_rotated", "s", str(path))]
    truncated, rotated = (e for e in logs if e["event"] in ("file_truncated", "file_rotated"))
    assert (truncated["size"], truncated["offset"]) == (0, 6)
    assert rotated["next_path"] == str(path) and rotated["log_level"] == "info"
    nursery.cancel_scope.cancel()
