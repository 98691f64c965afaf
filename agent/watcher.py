"""Which covered paths may have appeared, moved or gone: inotify (via watchdog) or polling, plus rescans.

Events are hints; the periodic rescan is the truth.  With ``watch: inotify`` (or
``auto`` where the kernel allows it) watchdog's thread reports creations, moves
and deletions in the watched directories, and all it ever does is
``trio_token.run_sync_soon(mark, path, idempotent=True)``; a trio task then
takes the whole dirty set per wake-up (``changes``).  Writes are not watched:
a file that is tailed is followed by its tailer's own reads (``Streams``
stats every tailed path once a round), and one modify event per write of
a thousand busy files cost a fifth of a core.  Every ``rescan_interval`` the
globs are walked again and every covered path is marked, which finds what
events missed.  With ``watch: poll`` (or when inotify is unavailable) the
globs are walked and stat'ed every ``poll_interval`` and only what changed
is marked.
"""

from __future__ import annotations

import os
from typing import Callable, Literal

import structlog
import trio

from agent.errors import WatchError
from agent.scanner import Scanner

log = structlog.get_logger()
WatchMode = Literal["auto", "inotify", "poll"]
_Snapshot = dict[str, tuple[int, int, int, int]]


def _snapshot(scanner: Scanner) -> _Snapshot:
    """Covered paths with (dev, inode, size, mtime): what polling compares.  Blocking."""
    snapshot: _Snapshot = {}
    for path in scanner.scan():
        try:
            st = os.stat(path)
        except OSError:
            continue
        snapshot[path] = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    return snapshot


class Watcher:
    """Collects paths that may have changed; ``run`` drives it, ``changes`` hands them out."""

    def __init__(self, scanner: Scanner, *, mode: WatchMode = "auto", poll_interval: float = 1.0, rescan_interval: float = 10.0) -> None:
        self.scanner = scanner
        self.requested_mode = mode
        self.mode: Literal["inotify", "poll"] | None = None  # decided by ``run``
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self._dirty: set[str] = set()
        self._wake = trio.Event()
        self._rescan_now = trio.Event()
        self._known: _Snapshot = {}
        self._observer: object | None = None
        self._handler: _Handler | None = None
        self._scheduled: set[str] = set()

    # -- the consumer side ---------------------------------------------------

    async def changes(self) -> set[str]:
        """Wait until some path is dirty; return and clear the whole dirty set."""
        await trio.lowlevel.checkpoint()
        while not self._dirty:
            self._wake = trio.Event()
            await self._wake.wait()
        dirty, self._dirty = self._dirty, set()
        return dirty

    def mark_dirty(self, path: str) -> None:
        """Record a path that may have changed (trio thread only)."""
        self._dirty.add(path)
        self._wake.set()

    # -- the producer side ---------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch until cancelled.  Ready (``started``) once events cannot be missed."""
        token = trio.lowlevel.current_trio_token()
        if self.requested_mode != "poll":
            await self._start_inotify(token)
        self.mode = "inotify" if self._observer is not None else "poll"
        try:
            self._known = await trio.to_thread.run_sync(_snapshot, self.scanner)
            for path in self._known:  # files that appeared before we watched
                self.mark_dirty(path)
            log.info("watcher_started", mode=self.mode, files=len(self._known))
            task_status.started()
            if self.mode == "poll":
                await self._poll_forever()
            else:
                await self._rescan_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_inotify()

    async def _poll_forever(self) -> None:
        while True:
            await trio.sleep(self.poll_interval)
            now = await trio.to_thread.run_sync(_snapshot, self.scanner)
            for path in now.keys() | self._known.keys():
                if now.get(path) != self._known.get(path):
                    self.mark_dirty(path)
            self._known = now

    async def _rescan_forever(self) -> None:
        while True:
            with trio.move_on_after(self.rescan_interval):
                await self._rescan_now.wait()
            self._rescan_now = trio.Event()
            now = await trio.to_thread.run_sync(_snapshot, self.scanner)
            for path in now.keys() | self._known.keys():
                self.mark_dirty(path)
            self._known = now
            await self._schedule_roots()

    # -- inotify through watchdog ----------------------------------------------

    async def _start_inotify(self, token: trio.lowlevel.TrioToken) -> None:
        try:
            from watchdog.observers.inotify import InotifyObserver

            self._observer = InotifyObserver()
            self._handler = _Handler(token, self._on_event)
            await self._schedule_roots()
            self._observer.start()  # type: ignore[attr-defined]
        except (OSError, ImportError) as exc:
            await self._stop_inotify()
            if self.requested_mode == "inotify":
                raise WatchError(f"inotify is unavailable: {exc}") from exc
            log.warning("watch_falls_back_to_poll", error=str(exc))

    async def _schedule_roots(self) -> None:
        """Watch every root directory that exists (and was not watched yet)."""
        observer = self._observer
        if observer is None:
            return
        for root in self.scanner.watch_roots():
            if root.path in self._scheduled or not os.path.isdir(root.path):
                continue
            await trio.to_thread.run_sync(self._schedule, observer, root.path, root.recursive)
            self._scheduled.add(root.path)

    def _schedule(self, observer: object, path: str, recursive: bool) -> None:
        from watchdog.events import DirCreatedEvent, DirMovedEvent, FileCreatedEvent, FileDeletedEvent, FileMovedEvent

        # No FileModifiedEvent: the kernel is not even asked for IN_MODIFY (see the module's docstring).
        kinds = [FileCreatedEvent, FileMovedEvent, FileDeletedEvent, DirCreatedEvent, DirMovedEvent]
        observer.schedule(self._handler, path, recursive=recursive, event_filter=kinds)  # type: ignore[attr-defined]

    async def _stop_inotify(self) -> None:
        observer, self._observer = self._observer, None
        self._scheduled.clear()
        if observer is None:
            return

        def stop() -> None:
            observer.stop()  # type: ignore[attr-defined]
            if observer.is_alive():  # type: ignore[attr-defined]
                observer.join()  # type: ignore[attr-defined]

        await trio.to_thread.run_sync(stop)

    def _on_event(self, path: str, is_directory: bool) -> None:
        """In the trio thread: keep covered paths; a new directory may hold new files."""
        if is_directory:
            self._rescan_now.set()
        elif path in self._known or self.scanner.match(path) is not None:
            self.mark_dirty(path)

    def __repr__(self) -> str:
        return f"<Watcher mode={self.mode or self.requested_mode} known={len(self._known)} dirty={len(self._dirty)}>"


class _Handler:
    """Runs in watchdog's thread: hands each event path to trio and returns."""

    def __init__(self, token: trio.lowlevel.TrioToken, on_event: Callable[[str, bool], None]) -> None:
        self._token = token
        self._on_event = on_event

    def dispatch(self, event: object) -> None:
        for raw in (getattr(event, "src_path", ""), getattr(event, "dest_path", "")):
            if raw:
                try:
                    path, is_directory = os.fsdecode(raw), bool(getattr(event, "is_directory", False))
                    self._token.run_sync_soon(self._on_event, path, is_directory, idempotent=True)
                except trio.RunFinishedError:
                    return
