"""Log writers for the agent's benchmarks: 100-byte lines, written at a pace, timestamped, rotated.

Every line is unique (its file tag and sequence number are in it), so a
reordered, repeated or missing line shows up when the objects are compared
with the files.  ``PacedWriter`` notes each write's end offset and time
(``time.monotonic``: CLOCK_MONOTONIC is one clock for every process on Linux,
so a poller in another process can be matched against it).
``RotatingWriter`` appends and rotates logrotate-style (``x.log`` becomes
``x.log.1``, ``x.log.1`` becomes ``x.log.2``...) and never deletes, so the
expected object is always on disk: ``generations`` oldest first.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

LINE = 100  # bytes per line, newline included
MiB = 1024 * 1024


def lines(tag: str, first: int, count: int) -> bytes:
    """``count`` lines of exactly LINE bytes, numbered from ``first``."""
    prefix = tag.encode()[:40]
    pad = b"." * (LINE - len(prefix) - 15)
    return b"".join(b"%s %012d %s\n" % (prefix, i, pad) for i in range(first, first + count))


def write_file(path: Path, size: int, tag: str) -> int:
    """A file of whole lines, about ``size`` bytes, flushed to disk (no writeback competes later); its size."""
    per_block = MiB // LINE
    written = seq = 0
    with open(path, "wb") as f:
        while written + LINE <= size:
            count = min(per_block, (size - written) // LINE)
            written += f.write(lines(tag, seq, count))
            seq += count
        f.flush()
        os.fsync(f.fileno())
    return written


@dataclass
class WriteLog:
    """One file's writes: ``ends[i]`` is the file size after write i, made at ``times[i]`` with ``counts[i]`` lines."""

    ends: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)


class PacedWriter:
    """A thread writing ``rate`` lines a second spread evenly over ``paths``, in ticks of ``tick`` seconds.

    Lines are tagged with the file's name and ``tag`` (so two writers' lines differ)."""

    def __init__(self, paths: list[Path], rate: float, tick: float = 0.01, tag: str = "") -> None:
        self.paths = paths
        self.tag = tag
        per_tick = max(1, round(rate * tick))
        self.per_file = max(1, per_tick // len(paths))  # lines per file per visit
        self.files_per_tick = max(1, per_tick // self.per_file)
        self.tick = tick
        self.logs = [WriteLog() for _ in paths]
        self.lines_written = 0
        self._fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) for p in paths]
        self._sizes = [os.fstat(fd).st_size for fd in self._fds]
        self._seq = [0] * len(paths)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="paced-writer", daemon=True)

    def start(self) -> PacedWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for fd in self._fds:
            os.close(fd)

    def _run(self) -> None:
        cursor = 0
        due = time.monotonic()
        while not self._stop.is_set():
            for _ in range(self.files_per_tick):
                self._write(cursor)
                cursor = (cursor + 1) % len(self.paths)
            due += self.tick
            pause = due - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)  # the writer's pace, not a wait for the system under test

    def _write(self, i: int) -> None:
        data = lines(self.paths[i].name + self.tag, self._seq[i], self.per_file)
        written_at = time.monotonic()
        os.write(self._fds[i], data)
        self._seq[i] += self.per_file
        self._sizes[i] += len(data)
        log = self.logs[i]
        log.ends.append(self._sizes[i])
        log.times.append(written_at)
        log.counts.append(self.per_file)
        self.lines_written += self.per_file


class RotatingWriter:
    """A thread appending to each of ``paths`` and rotating each one every ``rotate_bytes``.

    A rotation renames the file away, writes one more line to the renamed
    file (an application that has not reopened yet), then creates a new file
    at the path.  Some lines are written in two pieces (a partial line for a
    moment).  Nothing is ever deleted.
    """

    def __init__(self, paths: list[Path], bytes_per_second: float, rotate_bytes: int, tick: float = 0.01) -> None:
        self.paths = paths
        self.per_tick = max(1, round(bytes_per_second * tick / LINE / len(paths)))
        self.rotate_bytes = rotate_bytes
        self.tick = tick
        self.rotations = 0
        self.bytes_written = 0
        self._fds = [os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) for p in paths]
        self._sizes = [os.fstat(fd).st_size for fd in self._fds]
        self._generation = [0] * len(paths)  # rotated copies of each path so far
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rotating-writer", daemon=True)

    def start(self) -> RotatingWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for fd in self._fds:
            os.close(fd)

    def generations(self, i: int) -> list[Path]:
        """Every file path ``i`` has named, oldest first."""
        path = self.paths[i]
        return [path.with_name(f"{path.name}.{n}") for n in range(self._generation[i], 0, -1)] + [path]

    def _run(self) -> None:
        due = time.monotonic()
        while not self._stop.is_set():
            for i in range(len(self.paths)):
                self._append(i)
                if self._sizes[i] >= self.rotate_bytes:
                    self._rotate(i)
            due += self.tick
            pause = due - time.monotonic()
            if pause > 0:
                self._stop.wait(pause)  # the writer's pace

    def _append(self, i: int) -> None:
        data = lines(self.paths[i].name, self._seq, self.per_tick)
        self._seq += self.per_tick
        if self._seq % 7 == 0:  # half a line now, the rest in a moment
            os.write(self._fds[i], data[: LINE // 2])
            os.write(self._fds[i], data[LINE // 2 :])
        else:
            os.write(self._fds[i], data)
        self._sizes[i] += len(data)
        self.bytes_written += len(data)

    def _rotate(self, i: int) -> None:
        path = self.paths[i]
        for n in range(self._generation[i], 0, -1):
            os.rename(path.with_name(f"{path.name}.{n}"), path.with_name(f"{path.name}.{n + 1}"))
        os.rename(path, path.with_name(f"{path.name}.1"))
        self._generation[i] += 1
        late = lines(path.name + "-late", self._seq, 1)
        self._seq += 1
        os.write(self._fds[i], late)  # still open on the renamed file
        self.bytes_written += len(late)
        os.close(self._fds[i])
        self._fds[i] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        self._sizes[i] = 0
        self.rotations += 1
