"""Plumbing shared by the agent's end-to-end tests: configs, an in-process agent, an agent process.

Progress is observed, never slept for: in process through ``Shipper.wait_for``
(checked after every append), in a subprocess through its JSON log events
(``AgentProcess.wait_event``), each under ``trio.fail_after``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import yaml

from agent.app import Agent
from agent.config import AgentConfig, parse_config
from tests.support import ACCESS_KEY, REPO, SECRET_KEY, client_env

DEADLINE = 30.0
HOST = "test-host"


def lines(tag: str, count: int, start: int = 0) -> bytes:
    return b"".join(b"%s line %06d %s\n" % (tag.encode(), i, b"x" * (i % 40)) for i in range(start, start + count))


def append_to(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def config_document(tmp_path: Path, url: str, bucket: str, **extra: Any) -> dict[str, Any]:
    """A config for logs under ``tmp_path/logs`` (key ``test-host/<name>``), state in ``tmp_path/state``."""
    document: dict[str, Any] = {
        "sink": {"endpoint_url": url, "bucket": bucket, "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY},
        "inputs": [{"paths": [str(tmp_path / "logs" / "*.log")], "key": "{host}/{name}"}],
        "host": HOST,
        "state_dir": str(tmp_path / "state"),
        "http": {"listen": "127.0.0.1:0"},
        "partial_line_timeout": "200ms",
        "shutdown_timeout": "5s",
        "rescan_interval": "2s",
    }
    document.update(extra)
    return document


def agent_config(tmp_path: Path, url: str, bucket: str, **extra: Any) -> AgentConfig:
    (tmp_path / "logs").mkdir(exist_ok=True)
    return parse_config(config_document(tmp_path, url, bucket, **extra), {})


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


class AgentRun:
    """An agent running in this process (``start``); ``stop`` drains it like SIGTERM."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.done = trio.Event()

    @classmethod
    async def start(cls, nursery: trio.Nursery, config: AgentConfig, **options: Any) -> AgentRun:
        run = cls(Agent(config, env=client_env(), **options))

        async def go(task_status: trio.TaskStatus[None]) -> None:
            try:
                await run.agent.run(task_status=task_status)
            finally:
                run.done.set()

        await nursery.start(go)
        return run

    @property
    def shipper(self):  # type: ignore[no-untyped-def]
        assert self.agent.shipper is not None
        return self.agent.shipper

    @property
    def status_url(self) -> str:
        assert self.agent.status_address is not None
        return f"http://127.0.0.1:{self.agent.status_address[1]}"

    async def wait(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        with trio.fail_after(timeout):
            await self.shipper.wait_for(predicate)

    async def shipped(self, *paths: Path, timeout: float = DEADLINE) -> None:
        """Wait until every byte of the files now at ``paths`` is acknowledged (none of them written meanwhile)."""
        remaining = set(paths)

        def done() -> bool:
            remaining.difference_update([p for p in remaining if self.has_shipped(p)])
            return not remaining

        await self.wait(done, timeout)

    def has_shipped(self, path: Path) -> bool:
        lane = self.shipper.lane(str(path))
        if lane is None or not lane.idle or lane.state.identity is None:
            return False
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        identity = lane.state.identity
        return (identity.dev, identity.ino) == (st.st_dev, st.st_ino) and lane.state.offset == st.st_size

    async def stop(self, timeout: float = DEADLINE) -> None:
        self.agent.request_stop()
        with trio.fail_after(timeout):
            await self.done.wait()


@dataclass
class AgentProcess:
    """``tailbucket agent`` as a subprocess; its stderr JSON events as they arrive."""

    proc: trio.Process
    lines: list[str] = field(default_factory=list)
    _buffer: bytes = b""
    _cursor: int = 0

    @classmethod
    async def start(cls, config_file: Path, *args: str, command: str = "agent") -> AgentProcess:
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "server.cli", command, "--config", str(config_file), *args], cwd=REPO,
            env=client_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        return cls(proc)

    async def _read_more(self) -> bool:
        assert self.proc.stdout is not None
        data = await self.proc.stdout.receive_some(1 << 16)
        if not data:
            if self._buffer:
                self.lines.append(self._buffer.decode(errors="replace"))
                self._buffer = b""
            return False
        *complete, self._buffer = (self._buffer + data).split(b"\n")
        self.lines += [line.decode(errors="replace") for line in complete]
        return True

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = DEADLINE) -> dict[str, Any]:
        """The next event (after the last one returned) that matches ``predicate``."""
        with trio.fail_after(timeout):
            while True:
                while self._cursor < len(self.lines):
                    event = parse_event(self.lines[self._cursor])
                    self._cursor += 1
                    if event is not None and predicate(event):
                        return event
                if not await self._read_more():
                    raise AssertionError(f"exited ({await self.proc.wait()}) before the event: {self.lines[-8:]}")

    async def event(self, name: str, timeout: float = DEADLINE, **fields: Any) -> dict[str, Any]:
        return await self.wait_event(lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items()), timeout)

    async def finish(self, timeout: float = DEADLINE) -> int:
        with trio.fail_after(timeout):
            while await self._read_more():
                pass
            return await self.proc.wait()

    def events(self) -> list[dict[str, Any]]:
        return [e for e in map(parse_event, self.lines) if e is not None]

    def messages(self) -> list[str]:
        return [line for line in self.lines if line.strip() and parse_event(line) is None]

    async def close(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        if self.proc.stdout is not None:
            await self.proc.stdout.aclose()


def parse_event(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None
