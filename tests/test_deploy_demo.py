"""``make run``'s demo runner, as a subprocess: the object equals the rotated logs, Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, REPO, SECRET_KEY, ServerProcess

DEADLINE = 30.0


class Runner:
    """``python -m demo`` with its stdout read by a thread; ``wait_for`` waits on the output itself."""

    def __init__(self, data: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "demo", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--status", "127.0.0.1:0",
             "--rate", "400", "--rotate-bytes", "12000"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<eof>")
            self._changed.notify_all()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(DEADLINE)
        assert self.proc.stdout is not None
        self.proc.stdout.close()

    def wait_for(self, pattern: str) -> re.Match[str]:
        def found() -> re.Match[str] | None:
            return next((m for line in self.lines if (m := re.search(pattern, line))), None)

        with self._changed:
            assert self._changed.wait_for(lambda: found() or "<eof>" in self.lines, DEADLINE), self.lines[-10:]
            match = found()
        assert match is not None, f"{pattern!r} not in the output: {self.lines[-15:]}"
        return match


def test_the_demo_ships_the_rotated_log_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    data = tmp_path / "data"
    runner = Runner(data)
    try:
        pids = {name: int(pid) for name, pid in re.findall(r"(\w+)=(\d+)", runner.wait_for(r"^demo: pids (.*)").group(1))}
        assert set(pids) == {"server", "generator", "agent"}
        assert "s3api head-object --bucket logs --key demo/app.log --query ContentLength" in "\n".join(runner.lines)
        runner.wait_for(r"rotated app\.log -> app\.log\.2")
        runner.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends (the children have their own process groups)
        assert runner.proc.wait(DEADLINE) == 0, runner.lines[-15:]
    finally:
        runner.close()
    runner.wait_for(r"^demo: stopped$")
    for name, pid in pids.items():  # reaped by the runner: gone, not zombies or orphans
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"{name} (pid {pid}) outlived the demo")

    logs = data / "demo" / "logs"
    generations = sorted(logs.glob("app.log.*"), key=lambda p: int(p.suffix[1:]))
    assert len(generations) >= 2
    expected = b"".join(p.read_bytes() for p in generations) + (logs / "app.log").read_bytes()
    server = ServerProcess(data).start()  # the demo's data, read back by a fresh server
    try:
        got = httpx.get(f"{server.url}/logs/demo/app.log", auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION), timeout=10)
    finally:
        server.stop()
    assert got.status_code == 200 and got.content == expected
