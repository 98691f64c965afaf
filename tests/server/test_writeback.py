"""Large bodies' writeback: started every WRITEBACK_EVERY bytes, by its own thread (no writer waits for it)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from server import datafiles
from server.datafiles import (
    WRITEBACK_EVERY,
    DataFiles,
    PendingWrite,
    Writeback,
    read_ahead_at,
    release_written,
    start_writeback,
)

MiB = 1024 * 1024


class Ranges:
    """Stands in for the process's Writeback: records the ranges handed to it."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int, int]] = []

    def start(self, fd: int, offset: int, length: int) -> None:
        self.ranges.append((fd, offset, length))


@pytest.mark.parametrize("durable", [True, False])
def test_a_large_body_hands_its_ranges_to_the_writeback(tmp_path: Path, monkeypatch, durable: bool) -> None:
    ranges = Ranges()
    monkeypatch.setattr(datafiles, "WRITEBACK", ranges)
    files = DataFiles(tmp_path / "objects", durable=durable)
    files.prepare()
    base = 1000  # an append: past the committed length
    fd = files.create("ab" * 16)
    try:
        pending = PendingWrite(files, "ab" * 16, fd, base, fresh=False)
        piece = os.urandom(MiB)
        for _ in range(2 * WRITEBACK_EVERY // MiB + 1):
            pending.write_many([piece])
        expected = [(fd, base, WRITEBACK_EVERY), (fd, base + WRITEBACK_EVERY, WRITEBACK_EVERY)] if durable else []
        assert ranges.ranges == expected  # whole steps, in order, nothing left out between them
        assert Path(files.path("ab" * 16)).read_bytes()[base + 2 * WRITEBACK_EVERY :] == piece
    finally:
        os.close(fd)


def test_the_writeback_thread_serves_every_range_and_outlives_a_closed_fd(tmp_path: Path) -> None:
    served: list[tuple[int, int, int]] = []
    last_served = threading.Event()

    def start(fd: int, offset: int, length: int) -> None:
        start_writeback(fd, offset, length)  # the real call: a closed fd makes it fail, not raise
        served.append((fd, offset, length))
        if len(served) == 3:
            last_served.set()

    writeback = Writeback(start)
    closed = os.open(tmp_path / "gone", os.O_WRONLY | os.O_CREAT)
    os.close(closed)
    fd = os.open(tmp_path / "data", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, os.urandom(2 * MiB))
        writeback.start(fd, 0, MiB)
        writeback.start(closed, 0, MiB)
        writeback.start(fd, MiB, MiB)
        assert last_served.wait(10)
        assert served == [(fd, 0, MiB), (closed, 0, MiB), (fd, MiB, MiB)]
    finally:
        os.close(fd)


def test_the_writeback_thread_releases_each_range_one_behind_and_keeps_every_byte(tmp_path: Path) -> None:
    """The range before the newest is released (written, then dropped from the
    page cache); the newest stays cached.  Releasing changes no byte, and a
    range whose fd was closed meanwhile does not stop the thread."""
    released: list[tuple[int, int, int]] = []
    done = threading.Event()

    def release(fd: int, offset: int, length: int) -> None:
        released.append((fd, offset, length))
        release_written(fd, offset, length)  # the real call; raises EBADF for the closed fd
        if len(released) == 3:
            done.set()

    writeback = Writeback(release=release)
    closed = os.open(tmp_path / "gone", os.O_WRONLY | os.O_CREAT)
    os.close(closed)
    data = os.urandom(3 * MiB)
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, data)
        writeback.start(fd, 0, MiB)
        writeback.start(closed, 0, MiB)
        writeback.start(fd, MiB, MiB)
        writeback.start(fd, 2 * MiB, MiB)
        assert done.wait(10)
        assert released == [(fd, 0, MiB), (closed, 0, MiB), (fd, MiB, MiB)]
        assert os.pread(fd, 3 * MiB, 0) == data
    finally:
        os.close(fd)


def test_a_read_ahead_read_gives_exactly_the_bytes_asked_for_up_to_the_end(tmp_path: Path) -> None:
    """The hint for the bytes that follow changes nothing read; at the end there is nothing to hint."""
    data = os.urandom(3 * MiB + 5)
    path = tmp_path / "data"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_ahead_at(fd, 0, MiB, len(data)) == data[:MiB]
        assert read_ahead_at(fd, 3 * MiB, 5, len(data)) == data[3 * MiB :]
        with pytest.raises(OSError, match="ends at"):
            read_ahead_at(fd, 3 * MiB, 6, len(data) + 1)  # a short file is never silent
    finally:
        os.close(fd)
