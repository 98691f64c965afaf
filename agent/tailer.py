"""One stream: the bytes of a log path, in order, across rotations and truncations.

A ``Tailer`` follows whatever file its path names.  It reads with ``pread`` at
its own offset into one reused buffer (worker thread), cuts at the last newline
and sends each cut as a ``Chunk`` (its bytes read again by the worker thread
into a new ``bytes``: no copy on the event loop): never line by line
(splitting lines costs 5x a bare read).  What follows the last newline is held until its newline comes or
``partial_line_timeout`` passes.

* rotation (the path now names another file, or the file was deleted): keep
  reading the old file until it has been quiet for ``rotation_grace`` (a writer
  may not have reopened yet), then go on from byte 0 of the next file in the
  same stream, so order is kept: the new file at the path, or first any
  rotated sibling written in between (``fingerprint.find_successor``: the file
  rotated more than once while reading was stalled); none: the stream ends.
  Once the new file at the path holds data, the writer has moved on and the
  grace is not waited out: the old file, read to its end, is left at once if
  its last byte is a newline, else after ``ROTATION_QUIET`` without growth
  (its partial last line then goes out whole), so a writer rotating every few
  seconds is followed without falling behind;
* truncation (copytruncate: size below our offset, or the first bytes changed):
  continue from byte 0 of the same file, in a new generation;
* renamed away with no successor yet: keep reading the old file.

Reading waits on a shared ``ReadAheadBudget``: bytes read but not acknowledged
are bounded across all streams, and past that the log file is the buffer.
Events are hints (``poke``); every wake-up checks the file itself.
"""

from __future__ import annotations

import itertools
from collections import deque
import math
import os
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import structlog
import trio

from agent.batcher import Chunk, ChunkHandover
from agent.fingerprint import (
    FileIdentity,
    Probe,
    find_in_directory,
    open_successor,
    grown,
    matches,
    open_regular,
    probe_fd,
)

_generations = itertools.count(1)
NEWLINE = ord("\n")
ROTATION_QUIET = 0.1  # seconds a rotated file ending in a partial line may still grow once its successor has data


class ReadAheadBudget:
    """Bytes read from log files and not yet acknowledged by the server, all streams together.

    Tailers ``acquire`` before reading; whoever finally disposes of the bytes
    (the shipper, after the append is acknowledged) calls ``release``.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the read-ahead limit must be at least one byte")
        self.limit = limit
        self._available = limit
        self._lot = trio.lowlevel.ParkingLot()

    @property
    def in_use(self) -> int:
        return self.limit - self._available

    async def acquire(self, want: int) -> int:
        """Wait until some budget is free; take up to ``want`` bytes of it and return how many."""
        await trio.lowlevel.checkpoint_if_cancelled()  # no yield when free: the read that follows yields
        while self._available <= 0:
            await self._lot.park()
        granted = min(want, self._available)
        self._available -= granted
        return granted

    def release(self, size: int) -> None:
        self._available += size
        if self._available > self.limit:
            raise RuntimeError(f"read-ahead budget over-released ({self._available} > {self.limit})")
        self._lot.unpark_all()

    def __repr__(self) -> str:
        return f"<ReadAheadBudget {self.in_use}/{self.limit} waiting={len(self._lot)}>"


@dataclass(frozen=True)
class StartAt:
    """Where a new tailer begins: a checkpoint (``identity``, ``offset``), the start, or the end."""

    offset: int = 0
    identity: FileIdentity | None = None
    at_end: bool = False


BEGINNING = StartAt()
END = StartAt(at_end=True)


def cut_point(buffer: bytearray, start: int, end: int) -> int:
    """Where to cut ``buffer[:end]`` given new bytes from ``start``: after the last newline.

    With no newline among the new bytes, nothing is cut unless the buffer is full
    (one line longer than the buffer is sent in pieces; the bytes stay exact).
    """
    newline = buffer.rfind(b"\n", start, end)
    if newline >= 0:
        return newline + 1
    return end if end == len(buffer) else 0


def _read_lines(fd: int, buffer: bytearray, held: int, want: int, base: int) -> tuple[int, int, bytes | None]:
    """(worker thread) Read up to ``want`` bytes at file offset ``base + held`` into ``buffer`` after the
    held partial line; return (bytes read, where to cut, the chunk's bytes or None).

    The chunk's bytes, ``buffer[:cut]``, are read once more from the file straight
    into a new ``bytes`` (the page cache's copy, here, with the GIL released)
    instead of being copied out of the buffer on the event loop, where a MiB
    copy was a tenth of the agent's event-loop time.  Kept only if it is as long
    as the cut and ends in the newline found there; else None: the caller copies
    the buffer (a file rewritten between the two reads, or a cut that is no
    newline: a line longer than the buffer)."""
    read = os.preadv(fd, [memoryview(buffer)[held : held + want]], base + held)
    cut = cut_point(buffer, held, held + read) if read else 0
    if cut == 0 or buffer[cut - 1] != NEWLINE:
        return read, cut, None
    data = os.pread(fd, cut, base)
    return read, cut, data if len(data) == cut and data[-1] == NEWLINE else None


_Look = tuple[Probe, tuple[int, int, int] | None]


def _look(fd: int, path: str) -> _Look:
    """Our open file as it is now, and the file the path names now: (dev, inode, size), None: nothing."""
    probe = probe_fd(fd)
    try:
        st = os.stat(path)
    except OSError:
        return probe, None
    return probe, (st.st_dev, st.st_ino, st.st_size)


def _read_and_look(fd: int, buffer: bytearray, held: int, want: int, base: int, path: str,
                   identity: FileIdentity) -> tuple[int, int, bytes | None, _Look | None]:
    """(worker thread) ``_read_lines``, and when it found the end of the file (read short of ``want``)
    the ``_look`` a step takes next: one file call per poke, not two.

    A file that no longer starts with ``identity``'s bytes, or is shorter than
    our offset, is not read (bytes there belong to a rewritten file): the look
    says so and the step starts the file again as a truncation."""
    probe = probe_fd(fd)
    if probe.size < base + held or not matches(identity, probe.dev, probe.ino, probe.head):
        return 0, 0, None, _look(fd, path)
    read, cut, data = _read_lines(fd, buffer, held, want, base)
    return read, cut, data, (_look(fd, path) if read < want else None)


class Tailer:
    """Reads one path's bytes into ``chunks``.  ``run`` returns when the stream ends."""

    def __init__(
        self,
        stream: str,
        path: str,
        chunks: trio.MemorySendChannel[Chunk] | ChunkHandover,
        budget: ReadAheadBudget,
        *,
        start: StartAt = BEGINNING,
        chunk_size: int,
        partial_line_timeout: float,
        rotation_grace: float | None = None,
        run_sync: Callable[..., Awaitable[Any]] = trio.to_thread.run_sync,
    ) -> None:
        self.stream = stream
        self.path = path
        self._chunks = chunks
        self._budget = budget
        self._start = start
        self._buffer = bytearray(chunk_size)
        self._view = memoryview(self._buffer)
        self._partial_timeout = partial_line_timeout
        self._grace = partial_line_timeout if rotation_grace is None else rotation_grace
        self._fd: int | None = None
        self._identity: FileIdentity | None = None
        self._generation = 0
        self._base = 0  # file offset of buffer[0]
        self._held = 0  # bytes after the last newline, at buffer[:held]
        self._charged = 0  # budget taken for bytes not yet handed downstream
        self._partial_since = math.inf
        self._leaving_since: float | None = None  # while draining a rotated-away file: when it last grew
        self._leaving_quiet_at: float | None = None  # ... and when it will have been quiet long enough
        self._seen: deque[FileIdentity] = deque(maxlen=64)  # files this stream finished
        self._end_look: _Look | None = None  # the look taken with the read that found the file's end
        self._poked = trio.Event()
        # Blocking file calls go through here: a worker thread, or (in tests
        # that need exact virtual time) an inline call.
        self._run_sync = run_sync
        self._log = structlog.get_logger().bind(stream=stream, path=path)

    @property
    def offset(self) -> int:
        """The next file offset to read."""
        return self._base + self._held

    @property
    def sent(self) -> int:
        """The file offset up to which chunks were handed downstream (a held partial line is not).

        Once ``run`` has returned, a new tailer started at ``StartAt(sent, identity)``
        continues the stream without a gap or a repeat, whatever is still in transit.
        """
        return self._base

    @property
    def identity(self) -> FileIdentity | None:
        """The file being read now."""
        return self._identity

    @property
    def files_done(self) -> tuple[FileIdentity, ...]:
        """Files this stream finished (newest last): a rotated copy matched by a glob is not a new stream."""
        return tuple(self._seen)

    def poke(self) -> None:
        """Something may have changed at the path; look soon.  Sync, idempotent."""
        self._poked.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._chunks:
            try:
                opened = await self._open_first()
                task_status.started()
                if not opened:
                    return
                self._log.info("tailer_started", offset=self.offset, identity=str(self._identity))
                while True:
                    self._poked = trio.Event()
                    if await self._step():
                        self._log.info("tailer_finished", offset=self.offset)
                        return
                    await self._wait()
            finally:
                self._close()
                self._budget.release(self._charged)
                self._charged = 0

    # -- one wake-up ---------------------------------------------------------

    async def _step(self) -> bool:
        """Read what is new and react to what happened to the file; True: the stream ended."""
        while True:
            got = await self._read_to_eof()
            assert self._fd is not None and self._identity is not None
            look, self._end_look = self._end_look, None
            probe, at_path = look if look is not None else await self._run_sync(_look, self._fd, self.path)
            now = trio.current_time()
            if probe.size < self.offset or not matches(self._identity, probe.dev, probe.ino, probe.head):
                self._log.warning("file_truncated", size=probe.size, offset=self.offset)
                await self._flush_partial()
                self._begin(probe, 0)
                continue
            self._identity = grown(self._identity, probe.head)
            ours = (probe.dev, probe.ino)
            if (at_path is not None and at_path[:2] == ours) or (at_path is None and probe.nlink > 0):
                self._leaving_since = None  # still ours, or renamed away with no successor yet
            elif self._leaving_since is None or got:
                self._leaving_since = now  # rotated or deleted: drain until quiet
            self._leaving_quiet_at = None
            if self._leaving_since is not None:
                self._leaving_quiet_at = self._leaving_since + self._quiet_needed(at_path)
                if now >= self._leaving_quiet_at:
                    if await self._read_to_eof():  # it grew since the look above: not quiet after all
                        self._leaving_since = trio.current_time()
                        continue
                    if not await self._switch(probe):
                        return True
                    continue
            if self._held and now >= self._partial_since + self._partial_timeout:
                await self._flush_partial()
            return False

    def _quiet_needed(self, at_path: tuple[int, int, int] | None) -> float:
        """How long the rotated-away file must stay quiet before the stream leaves it."""
        if at_path is None or at_path[2] == 0:
            return self._grace  # deleted, or its successor still empty: the writer may not have reopened
        return min(self._grace, ROTATION_QUIET if self._held else 0.0)  # the writer writes the new file now

    async def _wait(self) -> None:
        partial = self._partial_since + self._partial_timeout if self._held else math.inf
        leaving = self._leaving_quiet_at if self._leaving_quiet_at is not None else math.inf
        wake_at = min(partial, leaving)
        if wake_at == math.inf:  # the usual case: no cancel scope and deadline to set up and take down
            await self._poked.wait()
            return
        with trio.move_on_at(wake_at):
            await self._poked.wait()

    async def _read_to_eof(self) -> int:
        """Read until the file has nothing more; return how many bytes were read.
        The file as it was just after the last read is left in ``_end_look``."""
        assert self._fd is not None and self._identity is not None
        total = 0
        self._end_look = None
        while True:
            space = len(self._buffer) - self._held
            if space == 0:  # a full buffer without a newline: send it as it is
                await self._send(len(self._buffer))
                continue
            granted = 0
            if not self._held:
                granted = await self._budget.acquire(space)
            else:
                with trio.move_on_at(self._partial_since + self._partial_timeout):
                    granted = await self._budget.acquire(space)
            if not granted:  # out of budget while holding a partial line: send it, so it can be acknowledged
                await self._flush_partial()
                continue
            read, cut, data, self._end_look = await self._run_sync(_read_and_look, self._fd, self._buffer, self._held,
                                                                   granted, self._base, self.path, self._identity)
            self._budget.release(granted - read)
            self._charged += read
            if read:
                total += read
                if cut == 0 and self._held == 0:
                    self._partial_since = trio.current_time()
                self._held += read
                if cut:
                    await self._send(cut, data)
            if read < granted:
                return total

    async def _send(self, cut: int, data: bytes | None = None) -> None:
        """Send ``buffer[:cut]`` (``data``: those bytes, already made) and keep the rest (a partial line) at the front."""
        assert self._identity is not None
        if data is None:
            data = bytes(self._view[:cut])
        chunk = Chunk(self.stream, self._generation, self._identity, self._base, data)
        await self._chunks.send(chunk)
        self._charged -= cut
        rest = self._held - cut
        if rest:
            self._buffer[:rest] = self._buffer[cut : self._held]
            self._partial_since = trio.current_time()
        self._base += cut
        self._held = rest
        if not rest:
            self._partial_since = math.inf

    async def _flush_partial(self) -> None:
        if self._held:
            self._log.debug("partial_line_flushed", size=self._held, offset=self._base)
            await self._send(self._held)

    # -- files -----------------------------------------------------------------

    async def _open_first(self) -> bool:
        start = self._start
        try:
            fd, probe = await self._run_sync(open_regular, self.path)
        except OSError as exc:
            self._log.warning("tailer_open_failed", error=str(exc))
            return False
        self._fd = fd
        if start.identity is None:
            self._begin(probe, probe.size if start.at_end else 0)
            return True
        if matches(start.identity, probe.dev, probe.ino, probe.head):
            if probe.size < start.offset:
                self._log.warning("file_truncated_while_stopped", size=probe.size, offset=start.offset)
                self._begin(probe, 0)
            else:
                self._begin(probe, start.offset)
            return True
        # The checkpointed file was rotated while we were stopped: finish it first.
        directory = os.path.dirname(self.path)
        sibling = await self._run_sync(find_in_directory, directory, start.identity)
        if sibling is None:
            self._log.warning("checkpoint_file_not_found", identity=str(start.identity), offset=start.offset)
            self._begin(probe, 0)
            return True
        try:
            old_fd, old_probe = await self._run_sync(open_regular, sibling)
        except OSError:
            self._begin(probe, 0)
            return True
        self._log.info("resuming_rotated_file", rotated_to=sibling, offset=start.offset)
        self._close()
        self._fd = old_fd
        self._begin(old_probe, min(start.offset, old_probe.size))
        return True

    def _begin(self, probe: Probe, offset: int) -> None:
        """Read the open file from ``offset`` as a new generation of the stream."""
        assert self._held == 0, "flush the partial line before changing files"
        self._identity = probe.identity
        self._generation = next(_generations)
        self._base = offset
        self._partial_since = math.inf
        self._leaving_since = None
        self._leaving_quiet_at = None

    async def _switch(self, left: Probe) -> bool:
        """Leave the drained file for the next one; False when there is none."""
        await self._flush_partial()
        old = self._identity
        self._close()
        if old is not None:
            self._seen.append(old)
        following = await self._run_sync(open_successor, self.path, left, tuple(self._seen))
        if following is not None:
            self._fd, probe, next_path = following
            self._log.info("file_rotated", old=str(old), new=str(probe.identity), old_end=self._base, next_path=next_path)
            self._begin(probe, 0)
            return True
        self._log.info("file_deleted", identity=str(old), end=self._base)
        return False

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __repr__(self) -> str:
        state = "leaving" if self._leaving_quiet_at is not None else "following"
        return (
            f"<Tailer {self.stream} {state} gen={self._generation} offset={self.offset} "
            f"held={self._held} identity={self._identity}>"
        )
