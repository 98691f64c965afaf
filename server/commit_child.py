"""The commit process's own side: small appends' last bytes, their index commit
and the flush after it, in a child process of the server (``server.commit_process``
is the server's side, and says why).

Run as ``python -m server.commit_child DATA_DIR LOCK_FD``.  The protocol, on
stdin and stdout: frames of a 4-byte big-endian length and a pickle.  In: a
list of ``(job id, data file path, offset, tail, appended row)``.  Out: a list
of ``(job id, None | error text)`` per batch, sent once the batch's bytes and
its commit are durable -- or refused, with its rows put back.  Only the server
writes to it (pickle is trusted input).

It ends at the end of its input, ignores SIGINT and SIGTERM (the server
finishes its requests first, then closes the pipe) and dies with the server
(``PR_SET_PDEATHSIG``).  It keeps the data dir's lock (``LOCK_FD``) open, so a
restarted server never recovers the data dir while it could still write.

It imports nothing heavier than sqlite3 and ctypes (~12 MiB of RSS, not ~35).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sqlite3
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.appended_rows import connect_appender, record_appends, roll_back_appends
from server.fileio import linux_call, syncfs, write_at

HEADER = struct.Struct(">I")
PIPE_SIZE = 1 << 20  # a turn's appends (tails up to 64 KiB each) fit without waiting
PR_SET_PDEATHSIG = 1


def encode(value: object) -> bytes:
    data = pickle.dumps(value, protocol=5)
    return HEADER.pack(len(data)) + data


class Frames:
    """Splits a byte stream into the values of its frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        values = []
        start = 0
        while len(buffer) - start >= HEADER.size:
            (size,) = HEADER.unpack_from(buffer, start)
            end = start + HEADER.size + size
            if end > len(buffer):
                break
            values.append(pickle.loads(buffer[start + HEADER.size:end]))
            start = end
        del buffer[:start]
        return values


class _WriteFds:
    """The write fds of one batch's data files, by path; all closed after the batch.
    Why not kept: the server unlinks replaced and deleted data files, and an fd kept
    here would hold their space (an open costs the child microseconds, not the loop)."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def get(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        return fd

    def forget(self, path: str) -> None:
        fd = self._fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def close_all(self) -> None:
        for path in list(self._fds):
            self.forget(path)


def commit_batch(conn: sqlite3.Connection, fds: _WriteFds, flush: Callable[[list[str]], None], jobs: list[tuple]) -> dict[int, str]:
    """Write, commit and flush one batch; the errors by job id (the others are durable).

    The rows keep their previous state (``update_appended_rows``) until
    recovery has checked the bytes, as the committer's own small appends do."""
    errors: dict[int, str] = {}
    written = []
    for job_id, path, offset, tail, row in jobs:
        try:
            if tail:
                write_at(fds.get(path), tail, offset)
        except OSError as exc:
            errors[job_id] = f"writing {path} at {offset}: {exc!r}"
            fds.forget(path)
        else:
            written.append((job_id, path, row))
    if not written:
        return errors
    committed = []
    try:
        for item, landed in zip(written, record_appends(conn, [(*row, True) for _, _, row in written])):
            if landed:
                committed.append(item)
            else:
                errors[item[0]] = f"append to {item[2][6]}/{item[2][7]} found no row for its data file"
    except sqlite3.Error as exc:
        for job_id, _, _ in written:
            errors[job_id] = f"index commit: {exc!r}"
    if not committed:
        return errors
    try:
        flush([path for _, path, _ in committed])
    except OSError as exc:
        try:
            roll_back_appends(conn, [row[6:9] for _, _, row in committed])
        except sqlite3.Error:
            pass  # recovery puts them back at the next start
        for job_id, _, _ in committed:
            errors[job_id] = f"flush after commit: {exc!r}"
    return errors


def serve(data_dir: Path, source: int = 0, answers: int = 1) -> None:
    """Commit the batches read from ``source`` until its end, answering on ``answers``."""
    conn = connect_appender(data_dir / "index.sqlite3")
    dir_fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    data_elsewhere = os.stat(data_dir / "objects").st_dev != os.fstat(dir_fd).st_dev
    fds = _WriteFds()

    def flush(paths: list[str]) -> None:
        if data_elsewhere:
            for path in paths:
                os.fdatasync(fds.get(path))
        syncfs(dir_fd)

    frames = Frames()
    while data := os.read(source, PIPE_SIZE):
        batches = frames.feed(data)
        if not batches:
            continue
        jobs = [job for batch in batches for job in batch]  # all that came meanwhile: one commit, one flush
        try:
            errors = commit_batch(conn, fds, flush, jobs)
        finally:
            fds.close_all()
        view = memoryview(encode([(job[0], errors.get(job[0])) for job in jobs]))
        while view:
            view = view[os.write(answers, view):]


def _die_with_parent() -> None:
    parent = os.getppid()
    linux_call("prctl", ctypes.c_int, ctypes.c_ulong)(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the server died before the call
        os._exit(1)


def main() -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    data_dir, _lock_fd = Path(sys.argv[1]), int(sys.argv[2])  # the lock: held open until this process ends
    serve(data_dir)


if __name__ == "__main__":
    main()
