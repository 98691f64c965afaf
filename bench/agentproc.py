"""``tailbucket agent`` as a benchmarked child process: its config, its events, its CPU and memory.

The agent runs as the real daemon (``python -m server.cli agent``), never in
the benchmark's own process, so its CPU time and RSS are its own
(``/proc/PID/stat`` utime + stime over all its threads, ``/proc/PID/status``
VmRSS / VmHWM).  Its JSON log lines are read by a thread; start-up waits on
the ``agent_ready`` event itself, with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from tests.support import ACCESS_KEY, REPO, SECRET_KEY, client_env

HOST = "bench"
BUCKET = "agent-bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def agent_config(workdir: Path, url: str, bucket: str, **overrides: Any) -> Path:
    """A default config (only what a deployment must say) for ``workdir/logs/*.log``, written to ``workdir``."""
    document: dict[str, Any] = {
        "sink": {"endpoint_url": url, "bucket": bucket, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        "inputs": [{"paths": [str(workdir / "logs" / "*.log")], "key": "{host}/{name}"}],
        "host": HOST,
        "state_dir": str(workdir / "state"),
        "http": {"listen": "127.0.0.1:0"},
        "log": {"format": "json", "level": "info"},
    }
    document.update(overrides)
    (workdir / "logs").mkdir(exist_ok=True)
    path = workdir / "agent.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def wait_until(done: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> float:
    """Poll ``done`` (a cheap look) until it holds and return when it did; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.0f} s: {what}")
        time.sleep(every)  # the observer's polling pace
    return time.monotonic()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the whole process (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (proc(5) fields 14, 15)


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) / 1024
    return out


@dataclass
class AgentProcess:
    """One running agent; ``events`` are its parsed log lines so far."""

    config: Path
    proc: subprocess.Popen | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _arrived: threading.Condition = field(default_factory=threading.Condition)
    _exited: bool = False
    _reader: threading.Thread | None = None

    def start(self) -> AgentProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "agent", "--config", str(self.config)],
                                     cwd=REPO, env=client_env(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.events = []
        self._exited = False
        self._reader = threading.Thread(target=self._read_events, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read_events(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "line": line.decode(errors="replace").rstrip()}
            with self._arrived:
                self.events.append(event)
                self._arrived.notify_all()
        with self._arrived:
            self._exited = True  # waiters must not hang
            self._arrived.notify_all()

    def wait_event(self, name: str, timeout: float) -> bool:
        """Wait until the agent has logged ``name`` (True), or exited or ``timeout`` passed without it (False)."""
        with self._arrived:
            self._arrived.wait_for(lambda: self.count(name) > 0 or self._exited, timeout)
            return self.count(name) > 0

    def wait_ready(self, timeout: float = 60.0) -> AgentProcess:
        if not self.wait_event("agent_ready", timeout) or self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"the agent did not get ready: {self.tail()}")
        return self

    def metric(self, name: str) -> float:
        """An unlabelled sample from the agent's ``/metrics`` (e.g. ``tailbucket_agent_appends_total``)."""
        ready = next(e for e in self.events if e.get("event") == "agent_ready")
        with urllib.request.urlopen(f"http://{ready['status']}/metrics", timeout=30) as response:
            for line in response.read().decode().splitlines():
                sample, _, value = line.partition(" ")
                if sample == name:
                    return float(value)
        raise KeyError(name)

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e.get("event") == name)

    def tail(self, n: int = 8) -> list[dict[str, Any]]:
        return self.events[-n:]

    def errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("level") in ("error", "critical") or e.get("event") == "text"]

    def kill(self) -> None:
        """SIGKILL, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._finish(30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: drain and write the checkpoint; the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self._finish(timeout)

    def _finish(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)
            self._reader = None
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return code
