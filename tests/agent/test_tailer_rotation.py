"""When the tailer leaves a rotated file, in exact virtual time (MockClock, file calls inline).

The grace (here 5 s) covers a writer that has not reopened yet.  Once the new
file at the path holds data the writer has moved on: a finished old file
(last byte a newline) is left at once, one ending in a partial line after
``ROTATION_QUIET`` without growth, and that partial line goes out whole.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from agent.tailer import ROTATION_QUIET
from tests.agent.test_tailer import Harness, append, inline

GRACE = 5.0


async def follow(path: Path, script, sizes: list[int]) -> list[tuple[float, bytes, int]]:  # type: ignore[no-untyped-def]
    """Run a tailer on ``path`` and ``script(h)`` beside it; (time, bytes, file offset) of each expected take."""
    got: list[tuple[float, bytes, int]] = []
    async with trio.open_nursery() as nursery:
        h = await Harness(nursery, path, run_sync=inline, partial_line_timeout=GRACE, rotation_grace=GRACE).start()
        nursery.start_soon(script, h)
        for size in sizes:
            data = await h.take(size)
            got.append((trio.current_time(), data, h.chunks[-1].offset + len(h.chunks[-1].data) - size))
        nursery.cancel_scope.cancel()
    return got


async def rotate_at_one_second(h: Harness, path: Path) -> None:
    """At t = 1: the log renamed to ``<name>.1`` and a new one started with a whole line."""
    await trio.sleep(1)
    path.rename(path.with_name(path.name + ".1"))
    path.write_bytes(b"new 1\n")
    h.tailer.poke()


async def test_a_finished_old_file_is_left_as_soon_as_the_new_one_has_data(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old 1\n")

    async def rotate(h: Harness) -> None:
        await rotate_at_one_second(h, path)

    got = await follow(path, rotate, [6, 6])
    assert got == [(0.0, b"old 1\n", 0), (1.0, b"new 1\n", 0)]  # not at 1 + GRACE


async def test_a_partial_last_line_goes_out_whole_after_a_brief_quiet(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old 1\nunfinished")

    async def rotate(h: Harness) -> None:
        await rotate_at_one_second(h, path)

    got = await follow(path, rotate, [6, 10, 6])
    assert got == [(0.0, b"old 1\n", 0), (1.0 + ROTATION_QUIET, b"unfinished", 6), (1.0 + ROTATION_QUIET, b"new 1\n", 0)]


async def test_a_line_finished_during_the_quiet_goes_out_as_one_line(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "app.log"
    path.write_bytes(b"old 1\nunfin")

    async def rotate(h: Harness) -> None:
        await rotate_at_one_second(h, path)
        await trio.sleep(ROTATION_QUIET / 2)
        append(tmp_path / "app.log.1", b"ished\n")  # the old writer's last write
        h.tailer.poke()

    got = await follow(path, rotate, [6, 11, 6])
    finished_at = 1.0 + ROTATION_QUIET / 2
    assert got == [(0.0, b"old 1\n", 0), (finished_at, b"unfinished\n", 6), (finished_at, b"new 1\n", 0)]


async def test_an_empty_new_file_keeps_the_grace_until_it_gets_data(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """logrotate's ``create``: the new file exists before the writer reopens; late old lines still count."""
    path = tmp_path / "app.log"
    path.write_bytes(b"old\n")
    rotated = tmp_path / "app.log.1"

    async def rotate(h: Harness) -> None:
        path.rename(rotated)
        path.write_bytes(b"")
        h.tailer.poke()
        await trio.sleep(1.5)
        append(rotated, b"late\n")  # not poked: found when the grace runs out, at GRACE
        await trio.sleep(GRACE)  # t = 6.5: the writer reopened and writes the new file
        append(path, b"new\n")
        h.tailer.poke()

    got = await follow(path, rotate, [4, 5, 4])
    assert got == [(0.0, b"old\n", 0), (GRACE, b"late\n", 4), (1.5 + GRACE, b"new\n", 0)]


async def test_a_deleted_file_still_waits_out_the_grace(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """No new file at the path: nothing says the writer has moved on."""
    path = tmp_path / "app.log"
    path.write_bytes(b"old\n")
    done_at: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            h = await Harness(nursery, path, run_sync=inline, partial_line_timeout=GRACE, rotation_grace=GRACE).start()
            await h.take(4)
            path.unlink()
            h.tailer.poke()
            await h.done.wait()
            done_at.append(trio.current_time())

    await main()
    assert done_at == [GRACE]
