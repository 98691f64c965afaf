"""Agent under a steady load of lines: freshness, CPU, memory, and a server outage.

Writers (``bench.logwriter.PacedWriter``) timestamp every write; a poller in
another process (``bench.freshness.SizePoller``) notes when each object grew;
a line's freshness is the first sighting of its bytes minus its write time.
The agent's CPU is its own ``/proc`` utime + stime over the measured window,
its memory VmRSS / VmHWM.  Every scenario ends with the objects compared with
the files byte for byte.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from agent.app import CPU_BUDGET
from bench import loadgen
from bench.agentproc import BUCKET, CLOCK_TICKS, HOST, AgentProcess, agent_config, cpu_seconds, memory_mib, wait_until
from bench.freshness import SizeLog, SizePoller, line_latencies, percentile
from bench.lean_client import lean_floor
from bench.logwriter import LINE, PacedWriter, WriteLog
from bench.raws3 import RawS3
from bench.verify import sizes_reached, verify
from tests.support import ACCESS_KEY, SECRET_KEY, ServerProcess

Row = tuple[str, str, str, str]
MAX_IN_FLIGHT = 4  # the agent's default ``max_in_flight``
APPENDS = "tailbucket_agent_appends_total"


@dataclass
class Fleet:
    """A server with a bucket, ``count`` empty log files and an agent tailing all of them."""

    server: ServerProcess
    agent: AgentProcess
    paths: list[Path]

    @classmethod
    def start(cls, tmp: Path, name: str, count: int) -> Fleet:
        workdir = tmp / name
        workdir.mkdir()
        server = ServerProcess(tmp / f"{name}-data").start()
        with RawS3(server.port) as s3:
            s3.create_bucket(BUCKET)
        config = agent_config(workdir, server.url, BUCKET)
        paths = [workdir / "logs" / f"f{i:04d}.log" for i in range(count)]
        for path in paths:
            path.touch()
        agent = AgentProcess(config).start().wait_ready(timeout=120)
        wait_until(lambda: agent.count("stream_started") >= count, 120, f"{count} streams started")
        return cls(server, agent, paths)

    def keys(self, paths: list[Path] | None = None) -> dict[str, Path]:
        return {f"{HOST}/{p.name}": p for p in (self.paths if paths is None else paths)}

    def caught_up(self, timeout: float) -> float:
        """Wait until every object is as long as its file; then compare them all.  When it caught up."""
        sizes = {key: path.stat().st_size for key, path in self.keys().items()}
        with RawS3(self.server.port) as s3:
            done = wait_until(lambda: sizes_reached(s3, BUCKET, f"{HOST}/", sizes), timeout, "objects caught up",
                              every=0.1)
            verify(s3, BUCKET, {key: [path] for key, path in self.keys().items()})
        return done

    def close(self) -> None:
        try:
            if self.agent.proc is not None and self.agent.proc.poll() is None and self.agent.stop() != 0:
                raise RuntimeError(f"the agent did not drain: {self.agent.tail()}")
        finally:
            self.agent.kill()
            self.server.stop()


@dataclass
class Window:
    """What a measured window saw: CPU in cores (agent, server, whole machine) and the agent's appends/s."""

    agent_cpu: float
    server_cpu: float
    machine_busy: float
    appends: float

    def __str__(self) -> str:
        per_append = f" ({self.agent_cpu / self.appends * 1e3:.1f} ms of agent CPU each)" if self.appends else ""
        return (f"{self.appends:.0f} appends/s{per_append}; server {self.server_cpu:.2f} core, "
                f"machine {self.machine_busy:.1f} of {os.cpu_count()} cores busy")


def _cpu_ticks() -> list[int]:
    """The machine's CPU time so far by state (/proc/stat's ``cpu`` line: user, nice, system, idle, iowait, irq, softirq, steal...)."""
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (every core; /proc/stat minus idle and iowait)."""
    fields = _cpu_ticks()
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS


def machine_stolen() -> float:
    """CPU seconds the hypervisor gave to other guests while ours wanted to run (every core; /proc/stat's steal)."""
    return _cpu_ticks()[7] / CLOCK_TICKS


def observe(fleet: Fleet, seconds: float) -> Window:
    """Let ``seconds`` pass (the writers write, the agent ships) and say what it cost."""
    agent, server = fleet.agent.pid, fleet.server.proc.pid  # type: ignore[union-attr]
    a0, s0, m0, n0 = cpu_seconds(agent), cpu_seconds(server), machine_busy(), fleet.agent.metric(APPENDS)
    t0 = time.monotonic()
    time.sleep(seconds)  # the measured window
    elapsed = time.monotonic() - t0
    return Window((cpu_seconds(agent) - a0) / elapsed, (cpu_seconds(server) - s0) / elapsed,
                  (machine_busy() - m0) / elapsed, (fleet.agent.metric(APPENDS) - n0) / elapsed)


def per_append_ms(window: Window) -> float:
    return window.agent_cpu / window.appends * 1e3 if window.appends else math.nan


def latencies_of(writer: PacedWriter, seen: dict[str, SizeLog], fleet: Fleet, paths: list[Path],
                 since: float = -math.inf) -> tuple[list[float], int]:
    """Every line's freshness for ``paths``, for writes made from ``since`` on; and lines never seen."""
    out: list[float] = []
    missing = 0
    index = {p: i for i, p in enumerate(writer.paths)}
    for key, path in fleet.keys(paths).items():
        log = writer.logs[index[path]]
        cut = bisect.bisect_left(log.times, since)
        log = WriteLog(log.ends[cut:], log.times[cut:], log.counts[cut:])
        got, lost = line_latencies(log, seen.get(key))
        out += got
        missing += lost
    return out, missing


def freshness(tmp: Path, files: int, rate: int, seconds: float, poll: float) -> list[Row]:
    """``rate`` lines/s over ``files`` files for ``seconds``: p50/p99 write-to-visible, agent CPU."""
    fleet = Fleet.start(tmp, "fresh", files)
    try:
        poller = SizePoller(fleet.server.port, BUCKET, f"{HOST}/", poll).start()
        writer = PacedWriter(fleet.paths, rate).start()
        window = observe(fleet, seconds)
        writer.stop()
        fleet.caught_up(timeout=60)
        seen = poller.stop()
        lat, missing = latencies_of(writer, seen, fleet, fleet.paths)
    finally:
        fleet.close()
    if missing:
        raise AssertionError(f"{missing} lines never seen by the poller although the objects are complete")
    achieved = writer.lines_written / seconds
    return [(f"freshness, {rate:,} lines/s over {files} files ({achieved:,.0f} written)",
             f"p50 {percentile(lat, 50) * 1e3:.0f} ms, p99 {percentile(lat, 99) * 1e3:.0f} ms",
             f"upper bound (polled every {poll * 1e3:.0f} ms); agent CPU {window.agent_cpu:.2f} core, {window}",
             "target p50 <= 100 ms, p99 <= 500 ms")]


def server_ceiling(port: int, connections: int, count: int, body: int) -> float:
    """Appends/s the server takes from a client that costs nothing: pre-signed ``body``-byte appends over
    ``connections`` keep-alive connections (the agent's ``max_in_flight``), one new object each.  No agent
    can append more often than this, and each of N busy streams gets at most ceiling / N appends a second."""
    data = os.urandom(body)
    heads = [[loadgen.signed_request("PUT", f"127.0.0.1:{port}", f"/{BUCKET}/ceiling/{c}", body=data,
                                     headers={"x-amz-write-offset-bytes": str(i * body)},
                                     access_key=ACCESS_KEY, secret=SECRET_KEY)
              for i in range(count // connections)] for c in range(connections)]
    result = loadgen.run(port, heads)
    if result.statuses != {200: result.requests}:
        raise RuntimeError(f"the ceiling's appends were refused: {result.statuses}")
    return result.rate


def many_files(tmp: Path, files: int, per_file: float, window: float, outage: float, poll: float,
               sample: int) -> list[Row]:
    """``files`` files at ``per_file`` lines/s each: CPU and freshness (next to the server ceiling and the lean
    client floor, ``bench.lean_client``), peak RSS, then a server outage."""
    fleet = Fleet.start(tmp, "many", files)
    sampled = fleet.paths[:sample]  # f0000..f0099: one listing of a prefix
    try:
        idle = memory_mib(fleet.agent.pid)["VmRSS"]
        quiet = observe(fleet, min(5.0, window / 3))  # nothing written: what following idle files costs
        ceiling = server_ceiling(fleet.server.port, MAX_IN_FLIGHT, 2000, int(per_file * LINE))  # the agent is idle
        floor = lean_floor(fleet.server.port, BUCKET, ACCESS_KEY, SECRET_KEY, streams=files, connections=MAX_IN_FLIGHT,
                           rounds=3, body=int(per_file * LINE))
        poller = SizePoller(fleet.server.port, BUCKET, f"{HOST}/f{'0' * (4 - len(str(sample - 1)))}", poll).start()
        writer = PacedWriter(fleet.paths, files * per_file).start()
        time.sleep(min(5.0, window / 3))  # warm-up: every stream has had its first append
        measured_from = time.monotonic()
        seen_window = observe(fleet, window)
        writer.stop()
        steady_peak = memory_mib(fleet.agent.pid)["VmHWM"]
        fleet.caught_up(timeout=180)
        seen = poller.stop()
        lat, missing = latencies_of(writer, seen, fleet, sampled, since=measured_from)
        # The outage: the writers go on, the agent must not buffer.
        writer = PacedWriter(fleet.paths, files * per_file, tag="-outage").start()
        time.sleep(1.0)  # writing again before the server goes
        before = memory_mib(fleet.agent.pid)["VmRSS"]
        down_at = time.monotonic()
        fleet.server.kill()
        rss = []
        while time.monotonic() - down_at < outage:
            time.sleep(0.5)  # the sampling pace
            rss.append(memory_mib(fleet.agent.pid)["VmRSS"])
        fleet.server.restart()
        up_at = time.monotonic()
        time.sleep(1.0)  # the writers go on a moment after the server is back
        writer.stop()
        caught_up = fleet.caught_up(timeout=180) - up_at
        memory = memory_mib(fleet.agent.pid)
    finally:
        fleet.close()
    if missing:
        raise AssertionError(f"{missing} lines never seen by the poller although the objects are complete")
    low, high = min(rss) / before - 1, max(rss) / before - 1
    return [
        (f"{files:,} files x {per_file:g} lines/s: agent CPU", f"{seen_window.agent_cpu:.2f} core",
         f"over {window:.0f} s (after {min(5.0, window / 3):.0f} s warm-up): {seen_window}",
         "target <= 0.5 core"),
        (f"{files:,} idle files: agent CPU", f"{quiet.agent_cpu:.3f} core",
         f"over {min(5.0, window / 3):.0f} s with nothing written (the watcher, rounds of stats, rescans)", ""),
        (f"{files:,} files x {per_file:g} lines/s: freshness", f"p50 {percentile(lat, 50) * 1e3:.0f} ms, "
         f"p99 {percentile(lat, 99) * 1e3:.0f} ms",
         f"lines written in the window, {sample} files polled every {poll * 1e3:.0f} ms (upper bound)",
         "target p99 <= 1 s"),
        (f"server ceiling, one PUT per append: {int(per_file * LINE)} B over {MAX_IN_FLIGHT} connections",
         f"{ceiling:,.0f} appends/s",
         f"zero-cost client, same server, same run: a turn per stream every >= {files / ceiling:.1f} s", ""),
        (f"lean client floor, one PUT per append: {files:,} streams, {int(per_file * LINE)} B",
         f"{floor.cpu_per_append * 1e6:.0f} µs CPU/append",
         f"sign + h11 + trio sockets, one read hop and one fsync a round, nothing else ({floor.appends / floor.seconds:,.0f}"
         f" appends/s): at the agent's {CPU_BUDGET} core {CPU_BUDGET / floor.cpu_per_append:,.0f} appends/s, a turn "
         f"every {files * floor.cpu_per_append / CPU_BUDGET:.2f} s; the agent (appends sharing requests): "
         f"{per_append_ms(seen_window):.2f} ms", ""),
        (f"peak RSS tailing {files:,} files", f"{steady_peak:.0f} MiB",
         f"idle with {files:,} files {idle:.0f} MiB; {memory['VmHWM']:.0f} MiB including the catch-up after the outage",
         "target <= 80 MiB"),
        (f"RSS during a {outage:.0f} s server outage (writers on)", f"{low:+.1%} .. {high:+.1%}",
         f"of {before:.0f} MiB before; caught up {caught_up:.1f} s after the restart, objects == files",
         "target within +-10%"),
    ]
