"""The watcher reports covered paths that change: through inotify, and by polling."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from agent.config import InputConfig
from agent.errors import WatchError
from agent.router import parse_template
from agent.scanner import Scanner
from agent.watcher import Watcher

DEADLINE = 10
# watchdog warns (in its own thread) when a recursive watch races with ``mkdir -p``;
# harmless, the rescan covers it, but this suite turns warnings into errors.
pytestmark = pytest.mark.filterwarnings("ignore:Callback with id .* already exists:RuntimeWarning")


def scanner_for(*patterns: str) -> Scanner:
    return Scanner([InputConfig(index=0, paths=patterns, key=parse_template("{path}"))])


async def wait_for(watcher: Watcher, path: Path) -> set[str]:
    """Collect change sets until ``path`` is among them; return everything seen."""
    seen: set[str] = set()
    with trio.fail_after(DEADLINE):
        while str(path) not in seen:
            seen |= await watcher.changes()
    return seen


@pytest.mark.parametrize("mode", ["inotify", "poll"])
async def test_new_matching_file_is_reported(tmp_path: Path, nursery: trio.Nursery, mode: str) -> None:
    watcher = Watcher(scanner_for(f"{tmp_path}/*.log"), mode=mode, poll_interval=0.01)  # type: ignore[arg-type]
    await nursery.start(watcher.run)
    assert watcher.mode == mode
    (tmp_path / "other.txt").write_bytes(b"not covered\n")
    (tmp_path / "new.log").write_bytes(b"hello\n")
    seen = await wait_for(watcher, tmp_path / "new.log")
    assert str(tmp_path / "other.txt") not in seen
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("mode", ["inotify", "poll"])
async def test_rename_and_delete_are_reported(tmp_path: Path, nursery: trio.Nursery, mode: str) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    watcher = Watcher(scanner_for(f"{tmp_path}/*.log"), mode=mode, poll_interval=0.01)  # type: ignore[arg-type]
    await nursery.start(watcher.run)
    await wait_for(watcher, log)  # present at start: reported once so nothing is missed
    log.rename(tmp_path / "app.log.1")
    await wait_for(watcher, log)
    (tmp_path / "app.log.1").rename(log)
    await wait_for(watcher, log)
    log.unlink()
    await wait_for(watcher, log)
    nursery.cancel_scope.cancel()


async def test_polling_reports_an_append(tmp_path: Path, nursery: trio.Nursery) -> None:
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    watcher = Watcher(scanner_for(f"{tmp_path}/*.log"), mode="poll", poll_interval=0.01)
    await nursery.start(watcher.run)
    await wait_for(watcher, log)
    with log.open("ab") as f:
        f.write(b"b\n")
    await wait_for(watcher, log)
    nursery.cancel_scope.cancel()


async def test_inotify_does_not_report_writes(tmp_path: Path, nursery: trio.Nursery) -> None:
    """Tailed files are followed by their tailers' rounds: one event per write of a thousand files cost
    a fifth of a core.  A creation after the writes is reported alone."""
    log = tmp_path / "app.log"
    log.write_bytes(b"a\n")
    watcher = Watcher(scanner_for(f"{tmp_path}/*.log"), mode="inotify", rescan_interval=3600)
    await nursery.start(watcher.run)
    await wait_for(watcher, log)
    with log.open("ab") as f:
        for _ in range(10):
            f.write(b"b\n")
            f.flush()
    (tmp_path / "marker.log").write_bytes(b"m\n")
    seen = await wait_for(watcher, tmp_path / "marker.log")
    assert str(log) not in seen
    nursery.cancel_scope.cancel()


async def test_file_in_a_new_subdirectory_is_found(tmp_path: Path, nursery: trio.Nursery) -> None:
    watcher = Watcher(scanner_for(f"{tmp_path}/**/*.log"), mode="inotify", rescan_interval=3600)
    await nursery.start(watcher.run)
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    (sub / "deep.log").write_bytes(b"x\n")
    await wait_for(watcher, sub / "deep.log")  # via the new directory's event and a rescan, not the hour timer
    nursery.cancel_scope.cancel()


async def test_root_created_later_is_found_by_rescan(tmp_path: Path, nursery: trio.Nursery) -> None:
    root = tmp_path / "later"  # does not exist yet: nothing to watch, only the rescan can find it
    watcher = Watcher(scanner_for(f"{root}/*.log"), mode="inotify", rescan_interval=0.05)
    await nursery.start(watcher.run)
    root.mkdir()
    (root / "x.log").write_bytes(b"x\n")
    await wait_for(watcher, root / "x.log")
    nursery.cancel_scope.cancel()


async def test_auto_prefers_inotify(tmp_path: Path, nursery: trio.Nursery) -> None:
    watcher = Watcher(scanner_for(f"{tmp_path}/*.log"), mode="auto")
    await nursery.start(watcher.run)
    assert watcher.mode == "inotify"
    nursery.cancel_scope.cancel()


async def test_inotify_unavailable_is_an_error_or_a_fallback(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watchdog.observers.inotify as inotify

    def no_inotify(*args: object, **kwargs: object) -> None:
        raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(inotify, "InotifyObserver", no_inotify)  # the kernel's refusal, not our code
    with pytest.raises(WatchError, match="inotify is unavailable"):
        await Watcher(scanner_for(f"{tmp_path}/*.log"), mode="inotify").run()
    watcher = Watcher(scanner_for(f"{tmp_path}/*.log"), mode="auto", poll_interval=0.01)
    await nursery.start(watcher.run)
    assert watcher.mode == "poll"
    (tmp_path / "new.log").write_bytes(b"x\n")
    await wait_for(watcher, tmp_path / "new.log")
    nursery.cancel_scope.cancel()
