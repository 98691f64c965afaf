"""The real agent process speaks sd_notify to a real unix datagram socket as $NOTIFY_SOCKET.

What systemd relies on with ``Type=notify`` and ``WatchdogSec=``: READY=1 once
shipping, WATCHDOG=1 at half of ``$WATCHDOG_USEC``, RELOADING=1 then READY=1
around a SIGHUP reload, STOPPING=1 on SIGTERM, and exit 0 after the drain.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from tests.agent.agent_support import AgentProcess, config_document, lines, write_config

WATCHDOG_USEC = 400_000  # pings expected every 0.2 s


class NotifySocket:
    """A bound datagram socket collecting what the agent says, each message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
        self.seen: list[tuple[float, str]] = []

    async def bind(self) -> None:
        await self.sock.bind(str(self.path))

    async def next_matching(self, prefix: str, timeout: float = 20.0) -> tuple[float, str]:
        with trio.fail_after(timeout):
            while True:
                message = (await self.sock.recv(4096)).decode()
                self.seen.append((trio.current_time(), message))
                if message.startswith(prefix):
                    return self.seen[-1]


@pytest.fixture
async def notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sock = NotifySocket(tmp_path / "notify.sock")
    await sock.bind()
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    yield sock
    sock.sock.close()


async def test_ready_watchdog_reloading_and_stopping(server, bucket, tmp_path: Path, notify: NotifySocket) -> None:
    (tmp_path / "logs").mkdir()
    for i in range(3):
        (tmp_path / "logs" / f"app{i}.log").write_bytes(lines(f"app{i}", 50))
    document = config_document(tmp_path, server.url, bucket, log={"format": "json", "level": "info"})
    agent = await AgentProcess.start(write_config(tmp_path / "agent.yaml", document))
    try:
        _, ready = await notify.next_matching("READY=1")
        assert ready.startswith("READY=1\nSTATUS=shipping 3 files, ") and ready.endswith(" behind")
        await agent.event("agent_ready")  # READY=1 comes only once the agent runs

        pings = [(await notify.next_matching("WATCHDOG=1"))[0] for _ in range(6)]
        gaps = [b - a for a, b in zip(pings, pings[1:])]
        interval = WATCHDOG_USEC / 2e6
        assert all(0.5 * interval < gap < 3 * interval for gap in gaps), gaps
        assert 0.7 * interval < sum(gaps) / len(gaps) < 1.6 * interval, gaps

        agent.proc.send_signal(signal.SIGHUP)
        _, reloading = await notify.next_matching("RELOADING=1")
        assert "\nMONOTONIC_USEC=" in reloading
        _, ready_again = await notify.next_matching("READY=1")
        assert ready_again.startswith("READY=1\nSTATUS=shipping 3 files")
        await agent.event("config_reloaded")

        agent.proc.send_signal(signal.SIGTERM)
        _, stopping = await notify.next_matching("STOPPING=1")
        assert stopping == "STOPPING=1"
        assert await agent.finish() == 0
        names = [e["event"] for e in agent.events()]
        assert names[-1] == "agent_stopped"
    finally:
        await agent.close()
