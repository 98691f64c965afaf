"""The commit process, the server's side: small durable appends are written,
committed and flushed by a child process (``server.commit_child``) with an
interpreter, so a GIL, of its own.

Why: with 16 connections of 1 KiB appends the event loop handed each turn's
appends to the committer's threads and then sat idle until their flush was
done (~1.3 ms of every ~5.8 ms cycle, a fifth of its time).  Handing appends
over while the loop is still busy did not help with threads: each of a
batch's dozen returns from a system call waits for the GIL the busy loop
holds.  A process shares no GIL, so a batch goes over as soon as a few appends
are in (``HAND_OVER_AT``) and commits while the loop parses the next requests.
Measured in alternating rounds against the threads alone: 0.42x -> 0.50x of
the bare server handing over once per turn, 0.44x -> 0.56x at four appends
(at 2, 4, 6 and 16 in one run: 0.49x, 0.48x, 0.46x, 0.44x).

The child holds the data dir's lock too, dies with the server and ends at the
end of its input (``server.commit_child``).  If it dies while the server runs,
the server settles its appends itself (``GroupCommitter._settle_lost``) and
starts another (unless it died young: then the server's threads commit).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from server.commit_child import PIPE_SIZE, Frames, encode

log = structlog.get_logger()

HAND_OVER_AT = 4  # appends of one turn that go to the child at once, before the turn ends
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ, named in Python 3.10+ only on some builds
CLOSE_TIMEOUT = 10.0  # seconds a closing server waits for the child to end by itself


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
            [sys.executable, "-P", "-m", "server.commit_child", str(data_dir), str(lock_fd)],
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
        self.started = trio.current_time()
        self._closing = False
        self.ended = trio.Event()  # its end is handled: reaped, pipes closed, unanswered jobs given to ``lost``
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
        if not expected:
            log.error("storage_commit_process_ended", pid=self._proc.pid, status=status, jobs=len(self._jobs))
            jobs = list(self._jobs.values())
            self._jobs.clear()
            try:
                await self._lost(jobs)
            finally:
                self.ended.set()
        self.ended.set()

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
                await self.ended.wait()
            if not self.ended.is_set():
                log.error("storage_commit_process_stuck", pid=self._proc.pid)
                self._proc.kill()
                await self.ended.wait()


def _child_env() -> dict[str, str]:
    """The child imports this very ``server`` package: its directory first on the
    path (and not the working directory: ``-P``), whatever the server's was."""
    env = dict(os.environ)
    packages = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [packages, env.get("PYTHONPATH")]))
    return env
