"""Agent benchmarks (issue "The agent", Benchmarks): throughput, freshness, many files, memory, kill -9.

Each figure is printed next to a limit measured in the same run (the machine
is 2 shared cores): the throughput next to a bare loop that reads the same
file and appends it in 1 MiB bodies to the same server (alternating rounds,
so both see the same neighbours), and the same pieces through the agent's
client stack alone (how much of the gap is the client's, how much the agent's); the 1,000-file freshness next to the
server's own append rate from a zero-cost client; every window with the
server's and the whole machine's CPU.  Every run ends by comparing the
objects with the files byte for byte: a fast wrong answer is not a result
(``Exactness`` raises).  ``python -m bench.agent_bench [--quick] [parts]``
runs it alone (parts: throughput, checkpoint, freshness, many, soak).

The agent is always the real daemon in its own process with the default
config (only the sink, inputs, state directory and host are set); the
server is ``tests.support.ServerProcess``.  Observers are cheap on purpose:
raw-socket requests (``bench.raws3``), one listing for many objects.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import trio

from bench import agent_load, agent_soak
from bench.agentproc import BUCKET, HOST, AgentProcess, agent_config, cpu_seconds, wait_until
from bench.logwriter import LINE, MiB, write_file
from bench.raws3 import RawS3
from bench.verify import Exactness, sizes_reached, verify
from tests.support import REPO, ServerProcess

Row = tuple[str, str, str, str]
OBSERVE_EVERY = 0.01  # seconds between two looks at the one stream's object


# -- 1. throughput --------------------------------------------------------------------------


def bare_loop_mbs(port: int, path: Path, key: str) -> float:
    """The ceiling: read ``path`` into one reused 1 MiB buffer and append each piece over one connection."""
    buffer = bytearray(MiB)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f, RawS3(port) as s3:
        started = time.monotonic()
        offset = 0
        while n := f.readinto(buffer):
            s3.append(BUCKET, key, offset, view[:n])
            offset += n
        elapsed = time.monotonic() - started
        if s3.head_length(BUCKET, key) != path.stat().st_size:
            raise Exactness(f"{key}: the bare loop's object is not the file's size")
    return offset / elapsed / 1e6


def client_loop_mbs(url: str, path: Path, key: str) -> float:
    """The agent's client stack alone: the bare loop's 1 MiB pieces appended through ``S3Client`` (SigV4,
    CRC32, ``PlainHTTPTransport`` on trio), as the agent's appends go, with no tailer, shipper or checkpoint:
    between the ceiling and the agent, it says how much of the gap is the client's and how much the agent's."""
    from bench.append_cpu import _client  # the agent's direct path (PlainHTTPTransport.exchange)

    async def loop() -> float:
        http, client = _client(url, "direct")
        async with http:
            with open(path, "rb", buffering=0) as f:
                started, offset = time.monotonic(), 0
                while body := f.read(MiB):
                    await client.append(BUCKET, key, offset, body)
                    offset += len(body)
                return offset / (time.monotonic() - started) / 1e6

    return trio.run(loop)


def ship_files(server: ServerProcess, workdir: Path, staged: list[Path], timeout: float) -> float:
    """Move ``staged`` files into the watched directory at once; seconds until every object is complete."""
    logs = workdir / "logs"
    sizes = {f"{HOST}/{p.name}": p.stat().st_size for p in staged}
    with RawS3(server.port) as s3:
        started = time.monotonic()
        for path in staged:
            path.rename(logs / path.name)
        prefix = f"{HOST}/{staged[0].name[:2]}"
        done = wait_until(lambda: sizes_reached(s3, BUCKET, prefix, sizes), timeout, f"{len(staged)} files shipped")
        verify(s3, BUCKET, {key: [logs / key.split("/", 1)[1]] for key in sizes})
    return done - started


def ship_one(server: ServerProcess, workdir: Path, staged: Path, timeout: float) -> tuple[float, float]:
    """Move ``staged`` into the watched directory; (seconds until its first bytes are in the object,
    seconds until all of them are).  One HEAD every OBSERVE_EVERY: the figure's error stays a few ms
    (a listing every 50 ms was up to 50 ms, 20% of a quick round) at a cost the server hardly notices."""
    key, size = f"{HOST}/{staged.name}", staged.stat().st_size
    with RawS3(server.port) as s3:
        started = time.monotonic()
        staged.rename(workdir / "logs" / staged.name)
        first = wait_until(lambda: (s3.head_length(BUCKET, key) or 0) > 0, timeout, f"{key} started", every=OBSERVE_EVERY)
        done = wait_until(lambda: s3.head_length(BUCKET, key) == size, timeout, f"{key} shipped", every=OBSERVE_EVERY)
        verify(s3, BUCKET, {key: [workdir / "logs" / staged.name]})
    return first - started, done - started


def server_put_ms(server: ServerProcess, key: str) -> float:
    """The server's median time on ``key``'s PUTs (its request log: from the head to the answer, the body's
    arrival included): where an append's time goes, the server's side or the client's."""
    durations = sorted(e["duration_ms"] for e in list(server.events)
                       if e.get("event") == "request" and e.get("method") == "PUT" and e.get("key") == key)
    return durations[len(durations) // 2] if durations else math.nan


def throughput(tmp: Path, rounds: int, round_mib: int, many: int, many_mib: int) -> list[Row]:
    """One stream, ``rounds`` times, each next to the bare loop on the same file (which goes first
    alternates between rounds); then ``many`` at once."""
    workdir, staging = tmp / "throughput", tmp / "staging"
    workdir.mkdir()
    staging.mkdir()
    server = ServerProcess(tmp / "throughput-data").start()
    agent = None
    try:
        with RawS3(server.port) as s3:
            s3.create_bucket(BUCKET)
        agent = AgentProcess(agent_config(workdir, server.url, BUCKET)).start().wait_ready()
        ceilings, ours, cpus, per_mib, starts, server_ms, clients = [], [], [], [], [], [], []
        for r in range(rounds):
            single = staging / f"one{r}.log"
            size = write_file(single, round_mib * MiB, single.name)
            if r % 2 == 0:
                ceilings.append(bare_loop_mbs(server.port, single, f"ceiling/{single.name}"))
                clients.append(client_loop_mbs(server.url, single, f"client/{single.name}"))
            cpu0 = cpu_seconds(agent.pid)
            first, seconds = ship_one(server, workdir, single, timeout=max(60, size / 10e6))
            cpu = cpu_seconds(agent.pid) - cpu0
            if r % 2 == 1:
                clients.append(client_loop_mbs(server.url, workdir / "logs" / single.name, f"client/{single.name}"))
                ceilings.append(bare_loop_mbs(server.port, workdir / "logs" / single.name, f"ceiling/{single.name}"))
            cpus.append(cpu / seconds)
            per_mib.append(cpu * 1e3 / round_mib)
            starts.append(first)
            ours.append(size / seconds / 1e6)
            server_ms.append((server_put_ms(server, f"{HOST}/{single.name}"), server_put_ms(server, f"ceiling/{single.name}")))
        batch = [staging / f"m{i:03d}.log" for i in range(many)]
        for path in batch:
            write_file(path, many_mib * MiB, path.name)
        many_size = sum(p.stat().st_size for p in batch)
        many_mbs = many_size / ship_files(server, workdir, batch, timeout=max(60, many_size / 5e6)) / 1e6
        if agent.stop() != 0:
            raise RuntimeError(f"the agent did not drain: {agent.tail()}")
    finally:
        if agent is not None:
            agent.kill()
        server.stop()
    ceiling, one = median(ceilings), median(ours)
    ratios = [o / c for o, c in zip(ours, ceilings)]
    return [
        (f"bare loop: read + 1 MiB appends, {round_mib} MiB of 100-byte lines", f"{ceiling:,.0f} MB/s",
         f"ceiling, median of {rounds} (" + ", ".join(f"{c:.0f}" for c in ceilings) + ")", ""),
        ("the agent's client alone: the same 1 MiB appends through S3Client", f"{median(clients):,.0f} MB/s",
         f"{median(c / x for c, x in zip(clients, ceilings)):.2f}x ceiling (each round: "
         + ", ".join(f"{c / x:.2f}" for c, x in zip(clients, ceilings)) + ")", ""),
        ("agent, one stream of 100-byte lines", f"{one:,.0f} MB/s, {one * 1e6 / LINE:,.0f} lines/s",
         f"{median(ratios):.2f}x ceiling (each round next to its ceiling: "
         + ", ".join(f"{x:.2f}" for x in ratios) + f"), agent CPU {median(cpus):.2f} core, "
         f"{median(per_mib):.2f} ms per MiB; first bytes {median(starts) * 1e3:.0f} ms after the file appears (counted); "
         f"the server's median PUT {median(a for a, _ in server_ms):.2f} ms (bare loop's {median(b for _, b in server_ms):.2f})",
         "target >= 0.8x and >= 80 MB/s"),
        (f"agent, {many} streams at once ({many_mib} MiB each)", f"{many_mbs:,.0f} MB/s aggregate",
         f"{many_mbs / ceiling:.2f}x ceiling", ""),
    ]


# -- 2. checkpoint writes ------------------------------------------------------------------------


def checkpoint_writes(tmp: Path, streams: int, rounds: int) -> Row:
    """One stream's new intent made durable: the whole state rewritten (snapshot) vs one journal line,
    alternating, in the same directory (same disk, same neighbours)."""
    from agent.checkpoint import Intent, StreamState, write_states
    from agent.fingerprint import identity_of
    from agent.journal import Journal

    directory = tmp / f"checkpoint-{streams}"
    directory.mkdir()
    identity = identity_of(1, 1, b"a log file\n")
    states = {f"/var/log/app{i:04d}.log": StreamState(f"/var/log/app{i:04d}.log", f"host/app{i:04d}.log", identity, i, i)
              for i in range(streams)}
    epoch, size = write_states(directory, states)
    journal = Journal(directory, epoch)
    name = next(iter(states))
    snapshot_ms, journal_ms = [], []
    for r in range(rounds):
        changed = states[name] = StreamState(name, f"host{name}", identity, r, r).with_intent(Intent(identity, r, r + 1, r, r + 1))
        started = time.perf_counter()
        write_states(directory, states)  # what every write cost before the journal
        snapshot_ms.append((time.perf_counter() - started) * 1e3)
        journal.close()
        journal = Journal(directory, json.loads((directory / "checkpoint.json").read_text())["journal"])
        started = time.perf_counter()
        journal.append({name: changed.json_text})
        journal_ms.append((time.perf_counter() - started) * 1e3)
    journal.close()
    snap, line = median(snapshot_ms), median(journal_ms)
    return (f"checkpoint write, {streams:,} streams, one changed", f"{line:.2f} ms journal line",
            f"{snap:.2f} ms rewriting the {size / 1024:,.0f} KiB snapshot (medians of {rounds}, alternating): "
            f"{snap / line:.1f}x", "")


def measure(quick: bool = False, only: str = "") -> list[Row]:
    """Every agent benchmark (about 7 minutes; ``quick``: about 2).  ``only``: the parts named, comma-separated."""
    wanted = set(filter(None, only.split(","))) or {"throughput", "checkpoint", "freshness", "many", "soak"}
    load_at_start = os.getloadavg()[0]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=REPO) as name:
        tmp = Path(name)
        if "throughput" in wanted:
            rows += throughput(tmp, rounds=3 if quick else 5, round_mib=64 if quick else 192, many=100,
                               many_mib=1 if quick else 4)
        if "checkpoint" in wanted:
            rows += [checkpoint_writes(tmp, streams, rounds=50 if quick else 200) for streams in (10, 1000)]
        if "freshness" in wanted:
            rows += agent_load.freshness(tmp, files=10, rate=10_000, seconds=5 if quick else 20, poll=0.02)
        if "many" in wanted:
            rows += agent_load.many_files(tmp, files=1000, per_file=10, window=8 if quick else 30,
                                          outage=8 if quick else 30, poll=0.05, sample=100)
        if "soak" in wanted:
            rows += agent_soak.soak(tmp, kills=10 if quick else 50, rate=1e6, rotate_bytes=2 * MiB, max_delay=1.5)
    rows.append(("machine load (1-minute average), start / end", f"{load_at_start:.1f} / {os.getloadavg()[0]:.1f}",
                 f"{os.cpu_count()} cores, shared with whatever else runs", ""))
    return rows


if __name__ == "__main__":
    from bench.__main__ import print_table

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print_table("agent (issue: the agent)", measure(quick="--quick" in sys.argv, only=args[0] if args else ""))
