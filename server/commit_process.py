"""The commit process: small appends' last bytes, their index commit and the
flush after it, done by a child process with an interpreter (so a GIL) of its own.

Why: with 16 connections of 1 KiB appends the event loop handed each turn's
appends to the committer's threads and then sat idle until their flush was
done (~1.3 ms of every ~5.8 ms cycle, a fifth of its time).  Handing appends
over while the loop is still busy did not help with threads: each of a
batch's dozen returns from a system call waits for the GIL the busy loop
holds.  A process shares no GIL, so a batch goes over as soon as a few appends
are in (``HAND_OVER_AT``) and commits while the loop parses the next requests.
Measured in alternating rounds against the threads alone: 0.42x -> 0.50x of
the bare server handing over once per turn, 0.44x -> 0.56x at four appends.

The protocol, on the child's stdin and stdout: frames of a 4-byte big-endian
length and a pickle.  In: a list of ``(job id, data file path, offset, tail,
appended row)``.  Out: a list of ``(job id, None | error text)`` per batch,
sent once the batch's bytes and its commit are durable -- or refused, with its
row put back.  Only the server writes to the child (pickle is trusted input).

The child ends at the end of its input, ignores SIGINT and SIGTERM (the server
finishes its requests first, then closes the pipe) and dies with the server
(``PR_SET_PDEATHSIG``).  It holds the data dir's lock too, so a restarted
server never recovers the data dir while an old child could still write.
If it dies while the server runs, the server settles its appends itself
(``GroupCommitter``) and goes on with its threads.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import pickle
import signal
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from server import index
from server.datafiles import syncfs, write_at

log = structlog.get_logger()

HEADER = struct.Struct(">I")
HAND_OVER_AT = 4  # appends of one turn that go to the child at once, before the turn ends
PIPE_SIZE = 1 << 20  # a turn's appends (tails up to 64 KiB each) fit without waiting
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ only on some builds
PR_SET_PDEATHSIG = 1
CLOSE_TIMEOUT = 10.0  # seconds a closing server waits for the child to end by itself


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


# -- the server's end -----------------------------------------------------------


class CommitProcess:
    """Starts the child and talks to it from the trio thread: ``send`` writes a
    batch without blocking (what the pipe cannot take yet goes out as it drains),
    and a system task reads the answers and calls ``answered(job, error)``.  When
    the child ends, every job without an answer goes to ``lost`` (one call)."""

    def __init__(
        self, data_dir: Path, lock_fd: int, answered: Callable[[Any, str | None], None],
        lost: Callable[[list[Any]], Any],
    ) -> None:  # fmt: skip
        """Call it in the trio thread (the child dies when the thread that started it ends)."""
        self._answered = answered
        self._lost = lost
        self._proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "server.commit_process", str(data_dir), str(lock_fd)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(lock_fd,), env=_child_env(),
        )  # fmt: skip
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in = self._proc.stdin.fileno()
        self._out = self._proc.stdout.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._in, F_SETPIPE_SZ, PIPE_SIZE)
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        self._jobs: dict[int, Any] = {}  # sent, not answered
        self._next_id = 0
        self._unsent = bytearray()
        self._unsent_waiting = trio.Event()
        self.alive = True  # its answers still come
        self._closing = False
        self._ended = trio.Event()  # the child has ended and its pipes are closed
        log.info("storage_commit_process_started", pid=self._proc.pid, data_dir=str(data_dir))
        trio.lowlevel.spawn_system_task(self._receive, name="commit-process-answers")
        trio.lowlevel.spawn_system_task(self._drain, name="commit-process-sends")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, jobs: Sequence[Any], items: list[tuple]) -> None:
        """Hand over ``jobs``, ``items`` being each one's ``(path, offset, tail, row)``."""
        first = self._next_id + 1
        frame = encode([(first + n, *item) for n, item in enumerate(items)])  # may raise: then nothing is sent
        for job in jobs:
            self._next_id += 1
            self._jobs[self._next_id] = job
        if self._unsent:
            self._unsent += frame
            return
        try:
            written = os.write(self._in, frame)
        except BlockingIOError:
            written = 0
        except OSError:  # the child is gone: its answers end, and _receive settles these jobs
            return
        if written < len(frame):
            self._unsent += memoryview(frame)[written:]
            self._unsent_waiting.set()

    async def _drain(self) -> None:
        """Write what the pipe could not take at once, as it drains."""
        while True:
            await self._unsent_waiting.wait()
            if not self.alive or self._closing:
                return
            self._unsent_waiting = trio.Event()
            while self._unsent:
                try:
                    await trio.lowlevel.wait_writable(self._in)
                    written = os.write(self._in, self._unsent)
                except BlockingIOError:
                    continue
                except (OSError, trio.ClosedResourceError):
                    self._unsent.clear()
                    return
                del self._unsent[:written]

    async def _receive(self) -> None:
        frames = Frames()
        try:
            while True:
                await trio.lowlevel.wait_readable(self._out)
                try:
                    data = os.read(self._out, PIPE_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    break
                for answers in frames.feed(data):
                    for job_id, error in answers:
                        self._answered(self._jobs.pop(job_id), error)
        except Exception as exc:  # a bug, or the pipe broken: the child must not go on alone
            log.error("storage_commit_process_failed", pid=self._proc.pid, error=repr(exc))
        self.alive = False
        self._unsent_waiting.set()  # _drain ends
        expected = self._closing and not self._jobs
        if not expected:
            self._proc.kill()  # its answers are over: make sure it writes nothing more before settling
        status = await trio.to_thread.run_sync(self._proc.wait)
        self._close_pipe(self._proc.stdin)  # type: ignore[arg-type]
        self._close_pipe(self._proc.stdout)  # type: ignore[arg-type]
        self._ended.set()
        if expected:
            return
        log.error("storage_commit_process_ended", pid=self._proc.pid, status=status, jobs=len(self._jobs))
        jobs = list(self._jobs.values())
        self._jobs.clear()
        await self._lost(jobs)

    @staticmethod
    def _close_pipe(pipe: Any) -> None:
        """In the trio thread: a task waiting on the pipe's fd is told first."""
        if not pipe.closed:
            trio.lowlevel.notify_closing(pipe.fileno())
            with contextlib.suppress(OSError):
                pipe.close()

    async def aclose(self) -> None:
        """End the child once no job is in flight: it ends at the end of its input."""
        self._closing = True
        self._unsent_waiting.set()
        self._close_pipe(self._proc.stdin)  # type: ignore[arg-type]
        with trio.CancelScope(shield=True):  # the child must not outlive its storage
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self._ended.wait()
            if not self._ended.is_set():
                log.error("storage_commit_process_stuck", pid=self._proc.pid)
                self._proc.kill()
                await self._ended.wait()


def _child_env() -> dict[str, str]:
    """The child imports this very ``server`` package: its directory first on the
    path (and not the working directory: ``-P``), whatever the server's was."""
    env = dict(os.environ)
    packages = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [packages, env.get("PYTHONPATH")]))
    return env


# -- the child ------------------------------------------------------------------


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

    The rows keep their previous state (``index.update_appended_rows``) until
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
        rows = [(*row, True) for _, _, row in written]
        if index.update_appended_rows(conn, rows) == len(rows):
            committed = written
        else:  # impossible under the server's per-object locks
            for job_id, path, row in written:
                if index.has_appended_row(conn, row):
                    committed.append((job_id, path, row))
                else:
                    errors[job_id] = f"append to {row[6]}/{row[7]} found no row for its data file"
    except sqlite3.Error as exc:
        for job_id, _, _ in written:
            errors[job_id] = f"index commit: {exc!r}"
    if not committed:
        return errors
    try:
        flush([path for _, path, _ in committed])
    except OSError as exc:
        try:
            index.roll_back_appends(conn, [row[6:9] for _, _, row in committed])
        except sqlite3.Error:
            pass  # recovery puts them back at the next start
        for job_id, _, _ in committed:
            errors[job_id] = f"flush after commit: {exc!r}"
    return errors


def serve(data_dir: Path, source: int = 0, answers: int = 1) -> None:
    """Commit the batches read from ``source`` until its end, answering on ``answers``."""
    conn = index.connect_appender(data_dir / "index.sqlite3")
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
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
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
