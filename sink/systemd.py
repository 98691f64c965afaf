"""The systemd notify protocol (``sd_notify``), spoken by the agent and the server.

With ``Type=notify`` systemd waits for ``READY=1`` before it counts a service
as started, shows ``STATUS=`` in ``systemctl status``, and with
``WatchdogSec=`` restarts a service whose ``WATCHDOG=1`` pings stop.  The pings
come from a trio task, so they stop exactly when the event loop stops making
progress.  Without ``$NOTIFY_SOCKET`` (not under systemd) everything here does
nothing.  Protocol: sd_notify(3) and sd_watchdog_enabled(3).
"""

from __future__ import annotations

import os
import socket
import time
from typing import Mapping

import structlog
import trio

log = structlog.get_logger("tailbucket.systemd")


class Notifier:
    """Sends state changes to the service manager, if there is one."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self.address = address or None
        self._watchdog_usec = _watchdog_usec(env)

    def __repr__(self) -> str:
        return f"Notifier(address={self.address!r}, watchdog_interval={self.watchdog_interval})"

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled(3) advises."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 2e6

    def notify(self, *lines: str) -> None:
        """Send one datagram of ``KEY=value`` lines; failures are logged, never raised."""
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            log.warning("systemd_notify_failed", address=self.address.replace("\0", "@"), error=str(exc))

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    async def run_watchdog(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Ping ``WATCHDOG=1`` at half the watchdog timeout, for as long as the event loop runs."""
        task_status.started()
        interval = self.watchdog_interval
        if interval is None or self.address is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await trio.sleep(interval)


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. our parent)
    return int(usec)
