"""Data files: the bytes of objects, one file per object version.

Files live at ``DATA/objects/<2 hex>/<32 hex id>`` with random ids: names never
derive from keys (keys may hold ``../``, ``//`` or anything else), and a plain
PUT writes a new file so readers of the old version keep reading it.

A data file may be longer than its object's committed length (an append in
flight, or one that died); the index is the truth and readers never look past
it.  Everything here blocks: call it from worker threads.
"""

from __future__ import annotations

import ctypes
import errno
import os
import queue
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import structlog

from server.fileio import linux_call, syncfs, write_at
from sink.durable import fsync_dir

log = structlog.get_logger()

WRITEBACK_EVERY = 4 * 1024 * 1024  # bytes of a large body written before their writeback is started

_HEX = frozenset("0123456789abcdef")


class DataFiles:
    """The ``objects`` directory under the data dir."""

    def __init__(self, root: Path, *, durable: bool, use_syncfs: bool = True) -> None:
        self.root = root
        self.durable = durable
        self.use_syncfs = use_syncfs

    def __repr__(self) -> str:
        return f"DataFiles(root={str(self.root)!r}, durable={self.durable})"

    def prepare(self) -> None:
        """Create all 256 fan-out directories up front, so creating a data file
        only ever needs its own directory synced."""
        self.root.mkdir(parents=True, exist_ok=True)
        for n in range(256):
            (self.root / f"{n:02x}").mkdir(exist_ok=True)
        if self.durable:
            fsync_dir(self.root)
            fsync_dir(self.root.parent)

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    def path(self, file_id: str) -> str:
        return f"{self.root}/{file_id[:2]}/{file_id}"

    def create(self, file_id: str) -> int:
        return os.open(self.path(file_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)

    def open_write(self, file_id: str) -> int:
        # Not O_APPEND: on Linux pwrite ignores the offset under O_APPEND.
        return os.open(self.path(file_id), os.O_WRONLY | os.O_CLOEXEC)

    def open_read(self, file_id: str) -> int:
        """Open for reading, front to back: the kernel reads further ahead (large
        bodies' pages are dropped once written, see ``release_written``)."""
        fd = os.open(self.path(file_id), os.O_RDONLY | os.O_CLOEXEC)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return fd

    def sync(self, fd: int, *, fresh: bool = False) -> None:
        """Make written bytes durable (a no-op when durability is relaxed).
        A fresh file gets a full fsync (its inode is new) plus its directory."""
        if not self.durable:
            return
        if fresh:
            os.fsync(fd)
        else:
            os.fdatasync(fd)

    def sync_writes(self, writes: list[PendingWrite]) -> None:
        """Make these writes durable before the index commits them.

        Several files: one syncfs(2) flushes the whole filesystem (data, inodes,
        new directory entries) -- one device flush instead of one per file, the
        difference between ~1 and ~8 ms per group on a busy virtual disk.  Since
        Linux 5.8 syncfs reports writeback errors like fsync does.  It also
        flushes other writers' dirty data on the same filesystem: give the data
        dir its own filesystem if that matters.  One file: fdatasync (+ fsync of
        a new file's directory).
        """
        if not self.durable or not writes:
            return
        if len(writes) > 1 and self.use_syncfs and syncfs is not None:
            fd = writes[0].fd
            assert fd is not None
            syncfs(fd)
            return
        for write in writes:
            assert write.fd is not None
            self.sync(write.fd, fresh=write.fresh)
            if write.fresh:
                self.sync_dir_of(write.file_id)

    def sync_dir_of(self, file_id: str) -> None:
        if self.durable:
            fsync_dir(self.root / file_id[:2])

    def unlink(self, file_id: str) -> None:
        try:
            os.unlink(self.path(file_id))
        except FileNotFoundError:
            pass

    def scan(self) -> Iterator[tuple[str, int]]:
        """(file id, size) of every data file; names that are not ours are logged and left alone."""
        for sub in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(sub.path):
                name = entry.name
                if len(name) != 32 or not _HEX.issuperset(name) or name[:2] != sub.name:
                    log.warning("storage_foreign_file", path=entry.path)
                    continue
                yield name, entry.stat(follow_symlinks=False).st_size


def write_all_at(fd: int, pieces: Sequence[bytes], offset: int) -> int:
    """Write ``pieces`` one after another at ``offset`` (one pwritev, finishing a
    short write piece by piece); returns the bytes written."""
    done = os.pwritev(fd, pieces, offset) if pieces else 0
    position = 0
    for piece in pieces:
        end = position + len(piece)
        if end > done:
            skip = max(0, done - position)
            write_at(fd, memoryview(piece)[skip:], offset + position + skip)
        position = end
    return position


READ_AHEAD = 4 * 1024 * 1024  # bytes past a streamed read that the kernel is asked to fetch meanwhile


def read_ahead_at(fd: int, offset: int, length: int, end: int) -> bytes:
    """``read_at``, after asking the kernel to start reading the next READ_AHEAD
    bytes (up to ``end``) in the background.  Why: a large body's pages are
    dropped once written (``release_written``), so a GET reads from the disk, and
    without this each read waited for the disk while nothing was being sent."""
    ahead = min(READ_AHEAD, end - offset - length)
    if ahead > 0:
        os.posix_fadvise(fd, offset + length, ahead, os.POSIX_FADV_WILLNEED)
    return read_at(fd, offset, length)


def read_at(fd: int, offset: int, length: int) -> bytes:
    """Exactly ``length`` bytes at ``offset``; a short file is a bug or damage, never silent."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            raise OSError(errno.EIO, f"data file ends at {offset + len(data)}, expected {offset + length}")
        data += more
    return data


class PendingWrite:
    """Bytes being added to one data file past its committed length.

    They are invisible until the index commits the new length; ``discard``
    puts the file back (truncate to ``base``, or remove a fresh file).
    ``fresh`` = the write makes a new data file (PUT, create-by-append), which
    is only created when the first bytes (or ``finish_writing``) arrive; an
    append writes through the object's open fd.
    """

    def __init__(self, files: DataFiles, file_id: str, fd: int | None, base: int, *, fresh: bool) -> None:
        if not fresh and fd is None:
            raise ValueError("an append needs the data file's open fd")
        self.files = files
        self.file_id = file_id
        self.fd = fd
        self.base = base
        self.fresh = fresh
        self.written = 0
        self._written_back = 0  # bytes of ``written`` whose writeback was started
        self.touched = False  # the file may differ from its committed state

    def __repr__(self) -> str:
        return f"PendingWrite(file_id={self.file_id!r}, base={self.base}, written={self.written}, fresh={self.fresh})"

    def write(self, data: bytes) -> None:
        """Write ``data`` next."""
        self.write_many((data,))

    def write_many(self, pieces: Sequence[bytes]) -> None:
        """Write ``pieces`` next, in one pwritev; every WRITEBACK_EVERY bytes, have
        the writeback thread start writing them to disk.  Why: a large body's bytes
        then reach the disk while the rest is still arriving, and the commit's flush
        finds little left to do (a 64 MiB append's flush: ~30 ms -> ~3 ms here)."""
        self.touched = True
        if self.fd is None:
            self.fd = self.files.create(self.file_id)
        self.written += write_all_at(self.fd, pieces, self.base + self.written)
        if self.written - self._written_back >= WRITEBACK_EVERY and self.files.durable:
            WRITEBACK.start(self.fd, self.base + self._written_back, self.written - self._written_back)
            self._written_back = self.written

    def finish_writing(self, tail: bytes) -> None:
        """Write the last bytes (creating a fresh file even for an empty body);
        ``DataFiles.sync_writes`` then makes them durable."""
        if tail or self.fd is None:
            self.write(tail)

    def discard(self) -> None:
        """Undo: nothing of this write may remain visible or take space."""
        if self.fresh:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            self.files.unlink(self.file_id)
        elif self.fd is not None:
            os.ftruncate(self.fd, self.base)
        self.written = self._written_back = 0
        self.touched = False


_sync_file_range = linux_call("sync_file_range", ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
# <linux/fs.h>: wait for writeback already under way, start it, wait for it
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range to disk (a hint: nothing is durable until a flush).
    Errors are left to that flush.  It may block: the kernel submits the I/O
    and waits while the device's queue is full."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def release_written(fd: int, offset: int, length: int) -> None:
    """Wait until a range whose writeback was started is on its way to disk, then
    drop its pages from the page cache.

    Why: a large body otherwise fills the page cache with pages the kernel must
    find fresh for every MiB.  On this virtual machine (whose freed memory goes
    back to the host) writing into fresh pages cost 0.5-3 ms of system time per
    MiB, against 0.2 ms into pages just released: a 512 MiB write loop ran at
    ~800-980 MiB/s without this and ~1,270-1,390 MiB/s with it, same run.  A log
    store's large bodies are rarely read back at once; the object's last few MiB
    stay cached.  Dirty or mapped pages are never dropped, so no byte can be lost.
    """
    if _sync_file_range is None:
        return
    _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER)
    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


class Writeback:
    """One thread that starts the writeback of written ranges, so that no writer waits for it.

    Why: ``start_writeback`` blocked a body's worker thread for 1-6 ms per 8 MiB
    here, and the next piece of the body waits for that worker (pieces are handed
    over one at a time), so the body's receiving stalled.  A range whose fd was
    closed (or reused) by the time the thread gets to it costs a useless hint at
    worst: writeback changes no bytes, and durability comes from the commit's flush.
    """

    def __init__(
        self,
        start: Callable[[int, int, int], None] = start_writeback,
        release: Callable[[int, int, int], None] = release_written,
    ) -> None:
        self._start = start
        self._release = release
        self._ranges: queue.SimpleQueue[tuple[int, int, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, fd: int, offset: int, length: int) -> None:
        """Have bytes [offset, offset + length) of ``fd`` start going to disk, soon."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._serve, daemon=True, name="storage-writeback")
                    self._thread.start()
        self._ranges.put((fd, offset, length))

    def _serve(self) -> None:
        """Start each range's writeback, then release the range before it (one
        range behind, so the disk always has the newer one to work on)."""
        behind: tuple[int, int, int] | None = None
        while True:
            written = self._ranges.get()
            self._start(*written)
            if behind is not None:
                self._release_quietly(*behind)
            behind = written

    def _release_quietly(self, fd: int, offset: int, length: int) -> None:
        # The fd may have been closed since (EBADF), or reused by another file:
        # dropping clean cached pages changes no bytes either way.
        try:
            self._release(fd, offset, length)
        except OSError:
            pass


WRITEBACK = Writeback()  # one for the process: a daemon thread, idle unless large bodies arrive
