"""Test support: the real server in a subprocess, and clients pointed at it.

The server runs as ``python -m server.cli server`` on 127.0.0.1:0 (a real
process, so blocking clients like boto3 and the aws CLI can talk to it and
crash tests can kill it).  Its JSON log lines are read by a thread; start-up
waits for the ``listening`` event itself, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "TBTESTACCESSKEY"
SECRET_KEY = "tb-test-secret-key/with+specials"
REGION = "us-east-1"
REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0


def client_env(**extra: str) -> dict[str, str]:
    """An environment for AWS clients: our keys, no config files, no instance metadata lookups."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_PAGER="",
    )
    env.update(extra)
    return env


@dataclass
class ServerProcess:
    """One running ``tailbucket server``; ``url`` is its endpoint."""

    data_dir: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    url: str = ""
    port: int = 0
    events: list[dict] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def start(self, port: int = 0) -> "ServerProcess":
        env = {**os.environ, "TAILBUCKET_ACCESS_KEY": ACCESS_KEY, "TAILBUCKET_SECRET_KEY": SECRET_KEY, **self.env}
        cmd = [sys.executable, "-m", "server.cli", "server", "--data-dir", str(self.data_dir),
               "--listen", f"127.0.0.1:{port}", *self.args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.events = []
        listening = threading.Event()
        self._reader = threading.Thread(target=self._read_logs, args=(self.proc, listening), daemon=True)
        self._reader.start()
        if not listening.wait(START_TIMEOUT) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"server did not start: {self.events[-5:]}")
        return self

    def _read_logs(self, proc: subprocess.Popen, listening: threading.Event) -> None:
        for line in proc.stderr:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "line": line.decode(errors="replace").rstrip()}
            self.events.append(event)
            if event.get("event") == "listening":
                self.port = int(event["address"].rsplit(":", 1)[1])
                self.url = f"http://127.0.0.1:{self.port}"
                listening.set()
        listening.set()

    def kill(self) -> None:
        """SIGKILL: no clean-up, as in a crash."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_logs()

    def _close_logs(self) -> None:
        """The log reader ends at EOF once the process is gone; then its pipe is closed."""
        if self._reader is not None:
            self._reader.join(10)
            self.proc.stderr.close()
            self._reader = None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then wait for a clean exit."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_logs()
        return self.proc.returncode

    def restart(self) -> "ServerProcess":
        """Start again on the same port with the same data."""
        return self.start(self.port)
