"""Where a tailer starts (checkpoint, beginning, end), the read-ahead budget, and a rotation storm."""

from __future__ import annotations

import random
from typing import Any
from pathlib import Path

import pytest
import trio
import trio.testing

from agent.fingerprint import identity_of, probe_path
from agent.tailer import END, ReadAheadBudget, StartAt
from tests.agent.test_tailer import Harness, append, inline, run_sync  # noqa: F401 (fixture)


def identity_and_size(path: Path) -> tuple[object, int]:
    probe = probe_path(str(path))
    assert probe is not None
    return probe.identity, probe.size


async def test_resume_at_checkpoint_offset_in_the_same_file(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"shipped\n")
    identity, size = identity_and_size(path)
    append(path, b"not yet\n")
    h = await Harness(nursery, path, start=StartAt(size, identity)).start()  # type: ignore[arg-type]
    assert await h.take(8) == b"not yet\n"
    assert h.chunks[0].offset == 8
    nursery.cancel_scope.cancel()


async def test_short_file_identity_still_matches_after_growing(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"a\n")  # identity covers 2 bytes
    identity, size = identity_and_size(path)
    append(path, b"b" * 300 + b"\n")
    h = await Harness(nursery, path, start=StartAt(size, identity)).start()  # type: ignore[arg-type]
    await h.take(301)
    assert h.chunks[0].offset == 2
    assert h.tailer.identity is not None and h.tailer.identity.head_len == 256  # grown to the full window
    nursery.cancel_scope.cancel()


async def test_rotated_while_stopped_finishes_the_old_file_first(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"shipped\n")
    identity, size = identity_and_size(path)
    append(path, b"written before rotation\n")
    path.rename(tmp_path / "app.log.1")
    path.write_bytes(b"after\n")
    h = await Harness(nursery, path, start=StartAt(size, identity)).start()  # type: ignore[arg-type]
    assert await h.take(24 + 6) == b"written before rotation\nafter\n"
    old, new = h.per_generation()
    assert old[1] == 8 and new[1] == 0
    nursery.cancel_scope.cancel()


async def test_checkpointed_file_gone_starts_the_new_file_at_zero(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old\n")
    identity, size = identity_and_size(path)
    path.unlink()
    path.write_bytes(b"brand new\n")
    h = await Harness(nursery, path, start=StartAt(size, identity)).start()  # type: ignore[arg-type]
    assert await h.take(10) == b"brand new\n"
    nursery.cancel_scope.cancel()


async def test_inode_reuse_is_a_new_file(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old content\n")
    st = path.stat()
    # The checkpoint knew a file on this very inode, with other first bytes.
    stale = identity_of(st.st_dev, st.st_ino, b"another file's first line\n")
    h = await Harness(nursery, path, start=StartAt(5, stale)).start()
    assert await h.take(12) == b"old content\n"
    assert h.chunks[0].offset == 0
    nursery.cancel_scope.cancel()


async def test_truncated_while_stopped_starts_at_zero(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"x\n" * 10)
    identity, size = identity_and_size(path)
    path.write_bytes(b"x\n")  # same first bytes, shorter than the checkpoint offset
    h = await Harness(nursery, path, start=StartAt(size, identity)).start()  # type: ignore[arg-type]
    assert await h.take(2) == b"x\n"
    assert h.chunks[0].offset == 0
    nursery.cancel_scope.cancel()


async def test_read_from_end_skips_what_is_there(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"history\n")
    h = await Harness(nursery, path, start=END).start()
    append(path, b"live\n")
    h.tailer.poke()
    assert await h.take(5) == b"live\n"
    assert h.chunks[0].offset == 8
    nursery.cancel_scope.cancel()


async def test_missing_file_ends_the_stream_at_once(tmp_path: Path, nursery: trio.Nursery) -> None:
    h = await Harness(nursery, tmp_path / "absent.log").start()
    with trio.fail_after(5):
        await h.done.wait()


async def test_reading_stops_when_the_read_ahead_budget_is_spent(tmp_path: Path, nursery: trio.Nursery) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"0123456789\n" * 100)  # 1100 bytes
    budget = ReadAheadBudget(200)
    send, receive = trio.open_memory_channel(100)
    h = Harness(nursery, path, budget=budget, chunk_size=64, run_sync=inline)
    h.receive = receive
    h.tailer._chunks = send  # the test holds the chunks without acknowledging them
    await h.start()
    await trio.testing.wait_all_tasks_blocked()
    held = []
    while True:
        try:
            held.append(receive.receive_nowait())
        except trio.WouldBlock:
            break
    assert budget.in_use == 200
    assert sum(len(c.data) for c in held) <= 200  # the rest is read but held as a partial line
    assert h.tailer.offset == 200
    budget.release(sum(len(c.data) for c in held))  # "acknowledged"
    await trio.testing.wait_all_tasks_blocked()
    assert h.tailer.offset > 200
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seed", range(6))
async def test_rotation_storm_every_byte_once_in_order(
    tmp_path: Path, nursery: trio.Nursery, seed: int, run_sync: Any
) -> None:
    """logrotate-style renames, many while the tailer is stalled (its channel full).

    Rotations here are microseconds apart, so rotated files often share an
    mtime tick: the order of the files in between then rests on the tie-breaks.
    """
    rng = random.Random(seed)
    path = tmp_path / "app.log"
    path.write_bytes(b"")
    h = await Harness(nursery, path, chunk_size=128, channel_size=4, run_sync=run_sync).start()
    files = [path]
    written = 0
    for step in range(80):
        if rng.random() < 0.15:  # rename, then the writer reopens a new file
            rotated = tmp_path / f"app.log.{1000 - step}"
            path.rename(rotated)
            files[-1] = rotated
            path.write_bytes(b"")
            files.append(path)
        line = b"%d %s\n" % (step, b"x" * rng.randrange(0, 300))
        append(path, line)
        written += len(line)
        h.tailer.poke()
        if rng.random() < 0.2:
            await trio.testing.wait_all_tasks_blocked()
            h.take_ready()
    await h.take(written - h.received)
    generations = h.per_generation()
    contents = [f.read_bytes() for f in files]
    assert [g[2] for g in generations] == [c for c in contents if c]
    assert all(g[1] == 0 for g in generations)
    nursery.cancel_scope.cancel()


async def test_partial_line_is_sent_when_budget_runs_out(tmp_path: Path, autojump_clock: object) -> None:
    """Held partial lines use budget too; the timeout frees them even while reading is stalled."""
    path = tmp_path / "app.log"
    path.write_bytes(b"x" * 100)  # one line, no newline yet, exactly the whole budget
    budget = ReadAheadBudget(100)
    async with trio.open_nursery() as nursery:
        h = await Harness(nursery, path, budget=budget, chunk_size=1000, run_sync=inline, partial_line_timeout=5.0).start()
        append(path, b"more\n")
        h.tailer.poke()
        data = await h.take(100)  # take() releases budget as the shipper would
        assert (data, trio.current_time()) == (b"x" * 100, 5.0)
        assert await h.take(5) == b"more\n"
        nursery.cancel_scope.cancel()
