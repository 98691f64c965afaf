"""The agent daemon: the root nursery, start and drain order, signals, reloads.

Start-up, each component ready before the next one feeds it: the checkpoint
(locked) and the S3 client, the status endpoint, the shipper, then the
streams (checkpointed ones resume, new ones follow ``read_from``) and the
watcher.  ``/ready`` turns true once they run and the sink answers.  The
tailers' chunks reach the shipper's lanes through a ``ChunkHandover`` (no
batcher task, no channel hops: a lane joins what waits into one append).

Shutdown flows downstream (DESIGN.md, "Concurrency"): the watcher and the
tailers stop (a held partial line is read again next time), the last
handover closes and ends the shipper's input, the shipper
sends everything queued within ``shutdown_timeout`` (appends still in flight
then are abandoned: their intents are on disk and settled at the next start),
and the checkpoint is written last.

While the sink does not answer, reading pauses: the free read-ahead budget
is held back, so memory stays flat and the log files are the buffer.

Signals (``run_agent``): SIGTERM/SIGINT drain and exit (a second one stops
at once, checkpoint still written); SIGHUP reloads the config's inputs.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
import time
from pathlib import Path
from typing import Mapping

import httpx
import structlog
import trio

from agent import events
from agent.batcher import ChunkHandover
from agent.checkpoint import open_checkpoint
from agent.config import AgentConfig, load_config
from agent.connect import SinkHealth, open_s3, probe_bucket, probe_key
from agent.cpu_budget import AppendRate
from agent.discovery import Streams
from agent.errors import ConfigError
from agent.metrics import CONTENT_TYPE, AgentMetrics, lag_bytes
from agent.shipper import APPEND_RATE, Shipper
from agent.status import Reply, serve_status
from agent.tail_to_bucket import is_directory_bucket
from agent.tailer import ReadAheadBudget
from sink.client import S3Client
from sink.errors import RemoteError, SinkError
from sink.systemd import Notifier

log = structlog.get_logger()
PROBE_INTERVAL = 1.0  # seconds between sink probes while it does not answer
STATUS_INTERVAL = 5.0  # seconds between STATUS= lines to systemd
CPU_BUDGET = 0.45  # cores the agent sizes its append rate to (agent.cpu_budget), of the 0.5 it may use
MAX_APPEND_RATE = 2000.0  # appends a second at most, however cheap they get
RATE_WINDOW = 1.0  # seconds between two looks at the CPU an append costs
RESTART_ONLY = ("sink", "batch", "state_dir", "http", "log", "host", "watch", "poll_interval", "rescan_interval",
                "partial_line_timeout", "shutdown_timeout", "max_in_flight", "max_read_ahead")


class Agent:
    """One agent: ``run`` until ``request_stop``; ``reload`` applies a changed config's inputs."""

    def __init__(self, config: AgentConfig, *, config_path: Path | None = None, env: Mapping[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.env = env
        self.transport = transport
        self.host = config.host or socket.gethostname()
        self.metrics = AgentMetrics()
        self.health = SinkHealth(on_change=lambda ready: self.metrics.sink_ready.set(int(ready)))
        self.metrics.sink_ready.set(0)
        self.shipper: Shipper | None = None
        self.streams: Streams | None = None
        self.status_address: tuple[str, int] | None = None
        self.running = False
        self._stop = trio.Event()
        self._ship_scope = trio.CancelScope()
        self._reloading = trio.Lock()

    @property
    def ready(self) -> bool:
        return self.running and self.health.ready

    def request_stop(self) -> None:
        """Drain and stop (what SIGTERM does)."""
        self._stop.set()

    def stop_now(self) -> None:
        """Stop without waiting for appends in flight (a second SIGTERM); the checkpoint is still written."""
        self._stop.set()
        self._ship_scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        log.info(events.AGENT_STARTING, host=self.host, bucket=cfg.sink.bucket, inputs=len(cfg.inputs),
                 state_dir=str(cfg.state_dir))
        async with open_checkpoint(cfg.state_dir) as checkpoint, open_s3(
            cfg.sink, self.health, env=self.env, max_connections=cfg.max_in_flight + 2, transport=self.transport
        ) as client:
            budget = ReadAheadBudget(cfg.max_read_ahead)
            self.metrics.watch_read_ahead(lambda: budget.in_use)
            shipper = self.shipper = Shipper(
                checkpoint, client, cfg.sink.bucket, budget, max_bytes=cfg.batch.max_bytes,
                max_in_flight=cfg.max_in_flight, metrics=self.metrics, health=self.health,
                s3express=is_directory_bucket(cfg.sink.bucket), on_failed=self._stream_failed,
                append_groups=cfg.sink.append_objects == "auto",
            )
            chunks = ChunkHandover(shipper.enqueue, shipper.end_input)
            streams = self.streams = Streams(cfg, shipper, checkpoint, budget, chunks, host=self.host, metrics=self.metrics)
            shipped = trio.Event()
            async with trio.open_nursery() as root:
                host, port = cfg.http.listen
                self.status_address = await root.start(serve_status, host, port, self._respond)
                root.start_soon(self._probe_sink, client)
                root.start_soon(self._hold_reading_while_unready, budget)
                root.start_soon(self._pace_by_cpu, shipper)
                await root.start(self._run_shipper, shipper, shipped)
                await root.start(streams.run)
                self.running = True
                log.info(events.AGENT_READY, streams=len(streams.tailers), status=f"{self.status_address[0]}:{self.status_address[1]}")
                task_status.started(self)
                await self._stop.wait()
                await self._drain(streams, shipped)
                root.cancel_scope.cancel()
        log.info(events.AGENT_STOPPED)

    async def _drain(self, streams: Streams, shipped: trio.Event) -> None:
        self.running = False
        log.info(events.AGENT_STOPPING, timeout=self.config.shutdown_timeout)
        streams.stop()
        with trio.move_on_after(self.config.shutdown_timeout) as deadline:
            await shipped.wait()
        if deadline.cancelled_caught:
            log.warning(events.DRAIN_TIMED_OUT, timeout=self.config.shutdown_timeout)
            self._ship_scope.cancel()
            await shipped.wait()

    async def _run_shipper(self, shipper: Shipper, shipped: trio.Event,
                           *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._ship_scope:
                await shipper.run(task_status=task_status)
        finally:
            shipped.set()

    def _stream_failed(self, stream: str) -> None:
        if self.streams is not None:
            self.streams.stop_stream(stream, failed=True)

    # -- reload -----------------------------------------------------------------------------

    async def reload(self, config: AgentConfig | None = None) -> bool:
        """Re-read the config (or take ``config``) and apply its inputs; False if it is invalid."""
        async with self._reloading:
            if config is None:
                if self.config_path is None:
                    return False
                try:
                    config = await trio.to_thread.run_sync(load_config, self.config_path)
                except ConfigError as exc:
                    log.error(events.CONFIG_RELOAD_FAILED, path=str(self.config_path), error=str(exc))
                    return False
            for section in RESTART_ONLY:
                if getattr(config, section) != getattr(self.config, section):
                    log.warning(events.RELOAD_IGNORED_CHANGE, section=section)
            if self.streams is None or not self.running:
                return False
            await self.streams.reconfigure(config.inputs)
            self.config = dataclasses.replace(self.config, inputs=config.inputs)
            log.info(events.CONFIG_RELOADED, inputs=len(config.inputs), streams=len(self.streams.tailers))
            return True

    # -- the sink's health ---------------------------------------------------------------------

    async def _probe_sink(self, client: S3Client) -> None:
        """While the sink is not ready, ask it (``probe_bucket``) every PROBE_INTERVAL."""
        while True:
            while self.health.ready:
                await self.health.wait_changed()
            try:
                await probe_bucket(client, self.config.sink.bucket, probe_key(self.host))
                self.health.accepted()
            except RemoteError as exc:
                if exc.status < 500:
                    self.health.refused(str(exc))
            except SinkError:
                pass  # no answer: the transport already said so
            await trio.sleep(PROBE_INTERVAL)

    async def _hold_reading_while_unready(self, budget: ReadAheadBudget) -> None:
        """Reading pauses while the sink is unreachable: take the free read-ahead budget until it answers."""
        while True:
            while self.health.ready:
                await self.health.wait_changed()
            held = 0

            async def take_what_frees() -> None:
                nonlocal held
                while True:
                    held += await budget.acquire(budget.limit)

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(take_what_frees)
                    while not self.health.ready:
                        await self.health.wait_changed()
                    nursery.cancel_scope.cancel()
            finally:
                budget.release(held)

    async def _pace_by_cpu(self, shipper: Shipper) -> None:
        """Every RATE_WINDOW, size the shipper's append rate to CPU_BUDGET over the CPU an append costs now."""
        pacing = AppendRate(CPU_BUDGET, floor=APPEND_RATE, ceiling=MAX_APPEND_RATE)
        cpu, appends = time.process_time(), self.metrics.appends_made()
        while True:
            await trio.sleep(RATE_WINDOW)
            cpu_now, appends_now = time.process_time(), self.metrics.appends_made()
            made = appends_now - appends
            held_back = made >= 0.9 * pacing.rate * RATE_WINDOW and bool(shipper.order.within(1))
            before = pacing.rate
            if pacing.update(cpu_now - cpu, made, held_back) != before:
                shipper.order.rate = pacing.rate
                log.debug(events.APPEND_RATE_SET, rate=round(pacing.rate), cpu=round((cpu_now - cpu) / RATE_WINDOW, 3),
                          appends=made)
            cpu, appends = cpu_now, appends_now

    # -- the status endpoint ------------------------------------------------------------------

    async def _respond(self, path: str) -> Reply:
        if path == "/metrics":
            positions = self.shipper.positions() if self.shipper is not None else []
            body = await trio.to_thread.run_sync(self.metrics.render, positions)
            return Reply(200, body, CONTENT_TYPE)
        if path == "/health":
            return Reply(200, b"ok\n")
        if path == "/ready":
            if self.ready:
                return Reply(200, b"ready\n")
            reason = "starting" if not self.running and not self._stop.is_set() else "stopping"
            if self.running:
                reason = f"sink not ready: {self.health.reason}"
            return Reply(503, f"not ready: {reason}\n".encode())
        return Reply(404, b"not found: /metrics, /health, /ready\n")


async def run_agent(config: AgentConfig, config_path: Path | None = None, *,
                    env: Mapping[str, str] | None = None) -> None:
    """The daemon: run the agent with SIGTERM/SIGINT (drain, then a second one: at once) and SIGHUP (reload).

    Under systemd (``$NOTIFY_SOCKET``) it also says READY=1 once every input
    runs, STATUS= every STATUS_INTERVAL, WATCHDOG=1 from a trio task,
    RELOADING=1 around a reload and STOPPING=1 on the first stop signal.
    """
    systemd = Notifier(env)
    agent = Agent(config, config_path=config_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, agent, systemd)
        nursery.start_soon(systemd.run_watchdog)
        async with trio.open_nursery() as running:
            await running.start(agent.run)
            systemd.ready(await status_line(agent))
            nursery.start_soon(_report_status, agent, systemd)
        nursery.cancel_scope.cancel()


async def status_line(agent: Agent) -> str:
    """The one-line summary systemd shows: "shipping 12 files, 0 B behind" (stats each file, in a thread)."""
    if not agent.running:
        return "stopping"
    positions = agent.shipper.positions() if agent.shipper is not None else []
    behind = await trio.to_thread.run_sync(lambda: sum(lag_bytes(p) for p in positions))
    files = len(agent.streams.tailers) if agent.streams is not None else 0
    sink = "" if agent.health.ready else f", sink not ready: {agent.health.reason}"
    return f"shipping {files} file{'' if files == 1 else 's'}, {_size(behind)} behind{sink}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


async def _report_status(agent: Agent, systemd: Notifier) -> None:
    while systemd.enabled and agent.running:
        await trio.sleep(STATUS_INTERVAL)
        if agent.running:
            systemd.status(await status_line(agent))


async def _reload(agent: Agent, systemd: Notifier) -> None:
    """RELOADING=1, the reload, then READY=1 again (also when the new config was refused: the old one runs on)."""
    systemd.reloading()
    await agent.reload()
    systemd.ready(await status_line(agent))


async def _watch_signals(agent: Agent, systemd: Notifier,
                         *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async with trio.open_nursery() as nursery:
            stopping = False
            async for signum in signals:
                log.info(events.SIGNAL_RECEIVED, signal=signal.Signals(signum).name)
                if signum == signal.SIGHUP:
                    nursery.start_soon(_reload, agent, systemd)
                elif stopping:
                    agent.stop_now()
                else:
                    stopping = True
                    systemd.stopping()
                    agent.request_stop()
