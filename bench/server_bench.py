"""Server benchmarks: small durable appends, large appends, GET, and peak RSS — each next to its ceiling.

The ceiling is a bare trio + h11 server (no storage, no auth) measured in the
same run by the same load generator, so the ratios hold on a noisy machine.
Small appends run in short paired rounds (bare then ours, then ours then
bare...), and their ratio is the median of the rounds' ratios, so a burst of
load from elsewhere skews a round or two rather than the figure; the pooled
ratio (each side's requests over its time in all rounds) is printed beside it.

The server's log goes through a pipe to a separate ``cat`` writing a file, as
it would go to journald: the load generator's process does not parse it (a
log-reading thread there would compete with the generator for its GIL, which
the bare server, logging nothing, never makes it do).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench import loadgen
from bench.agent_load import machine_stolen
from tests.support import ACCESS_KEY, REPO, SECRET_KEY

CONNECTIONS = 16
SMALL = 1024
LARGE = 64 * 1024 * 1024
MiB = 1024 * 1024
ROUNDS = 9  # small-append rounds: short pairs, so a burst from elsewhere skews few of them


def start_bare(prefix: tuple[str, ...] = ()) -> tuple[subprocess.Popen, int]:
    """``prefix``: a command to run it under (``bench.instructions``: valgrind)."""
    proc = subprocess.Popen([*prefix, sys.executable, "-m", "bench.bare_server"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the port, once it listens
    if not line.strip().isdigit():
        raise RuntimeError("bare server did not start")
    return proc, int(line)


@dataclass
class Server:
    """``tailbucket server`` on 127.0.0.1:0; its log drained into ``log_path`` by ``cat``."""

    proc: subprocess.Popen
    drain: subprocess.Popen
    port: int

    @classmethod
    def start(cls, data_dir: Path, log_path: Path, prefix: tuple[str, ...] = ()) -> Server:
        env = {**os.environ, "TAILBUCKET_ACCESS_KEY": ACCESS_KEY, "TAILBUCKET_SECRET_KEY": SECRET_KEY}
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "server.cli", "server", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0"],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        port = None
        pending = b""
        with open(log_path, "wb") as log:
            while port is None:  # read up to the "listening" event, which names the port
                data = os.read(proc.stderr.fileno(), 65536)  # unbuffered: what is read is logged, nothing is lost
                if not data:
                    proc.wait()
                    raise RuntimeError(f"server did not start; see {log_path}")
                log.write(data)
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("event") == "listening":
                        port = int(event["address"].rsplit(":", 1)[1])
        with open(log_path, "ab") as log:
            drain = subprocess.Popen(["cat"], stdin=proc.stderr, stdout=log)
        proc.stderr.close()  # cat has it now
        return cls(proc, drain, port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.drain.wait(30)


def sign(method: str, port: int, path: str, **kw) -> bytes:
    return loadgen.signed_request(method, f"127.0.0.1:{port}", path, access_key=ACCESS_KEY, secret=SECRET_KEY, **kw)


def small_appends(port: int, per_conn: int, bucket: str = "bench", start: int = 0) -> list[list[bytes]]:
    """``per_conn`` signed 1 KiB appends for each of 16 objects, the first at offset ``start`` x 1 KiB."""
    body = os.urandom(SMALL)
    return [
        [sign("PUT", port, f"/{bucket}/obj{c}", body=body, headers={"x-amz-write-offset-bytes": str(i * SMALL)})
         for i in range(start, start + per_conn)]
        for c in range(CONNECTIONS)
    ]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the server's commit process)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]  # fmt: skip


def tree_cpu_seconds(pid: int) -> float:
    """``cpu_seconds`` of ``pid`` and its children: what the server costs in all."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def measure(per_conn: int = 1500, large_count: int = 8, rss_gib: int = 2, *,
            large_only: bool = False) -> list[tuple[str, str, str, str]]:
    """Every row; ``large_only``: the large-append and GET rows alone (no small appends, no RSS run)."""
    bare, bare_port = start_bare()
    try:
        return _measure(bare, bare_port, per_conn, large_count, rss_gib, large_only)
    finally:
        bare.terminate()
        bare.wait()


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of process ``pid`` (or of its thread ``thread``) so far (/proc/<pid>/stat)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commit_counts(port: int) -> tuple[float, float]:
    """(group commits, writes in them) from the server's metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_tailbucket/metrics", timeout=30) as answer:
        text = answer.read().decode()
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    return samples["tailbucket_commit_batches_total"], samples["tailbucket_committed_writes_total"]


def _small_appends(bare_port: int, port: int, per_conn: int, bare_pid: int, pid: int) -> list[tuple[str, str, str, str]]:
    """Paired rounds against the bare server and ours (which goes first alternates);
    the requests are signed before each is timed.

    The ratio is the median of the rounds' own ratios (ours / bare, each pair run
    back to back): a burst of load from elsewhere on this shared machine skews one
    round, not the figure.  The pooled ratio (all requests over all time) and the
    rounds' range are printed too.  Besides the rates, each server's CPU time per
    request (and ours on its event loop's thread, the one that limits it).  How
    busy that thread was while our rounds ran says what binds the rate: the loop's
    CPU (near 100%), or the wait for group commits (well below).  The share of the
    machine's CPU the hypervisor gave to other guests (steal) says how loaded the
    host under this machine was while the rounds ran."""
    per_round = max(1, per_conn // ROUNDS)
    batches_before, writes_before = commit_counts(port)
    bare_cpu, ours_cpu, loop_cpu = cpu_seconds(bare_pid), tree_cpu_seconds(pid), cpu_seconds(pid, pid)
    bare = loadgen.Result(0, 0.0, {}, 0, 0)
    ours = loadgen.Result(0, 0.0, {}, 0, 0)
    gen_cpu = 0.0
    ratios = []
    stolen, started = machine_stolen(), time.perf_counter()
    for n in range(ROUNDS):
        bare_requests = small_appends(bare_port, per_round)
        our_requests = small_appends(port, per_round, start=n * per_round)
        rates = {}
        for side in ("bare", "ours") if n % 2 == 0 else ("ours", "bare"):
            if side == "bare":
                cpu = time.process_time()
                result = loadgen.run(bare_port, bare_requests)
                gen_cpu += time.process_time() - cpu
                total = bare
            else:
                result = loadgen.run(port, our_requests)
                assert result.statuses == {200: result.requests}, result.statuses
                total = ours
            total.requests += result.requests
            total.seconds += result.seconds
            rates[side] = result.rate
        ratios.append(rates["ours"] / rates["bare"])
    steal = (machine_stolen() - stolen) / (time.perf_counter() - started) / (os.cpu_count() or 1)
    gen_cpu_us = gen_cpu / bare.requests * 1e6
    bare_cpu_us = (cpu_seconds(bare_pid) - bare_cpu) / bare.requests * 1e6
    cpu_us = (tree_cpu_seconds(pid) - ours_cpu) / ours.requests * 1e6
    loop_cpu_us = (cpu_seconds(pid, pid) - loop_cpu) / ours.requests * 1e6
    loop_busy = loop_cpu_us * ours.requests / 1e6 / ours.seconds  # near 100%: CPU-bound; well below: waiting on commits
    batches, writes = commit_counts(port)
    batch = (writes - writes_before) / max(1.0, batches - batches_before)
    return [
        ("bare trio+h11, 1 KiB PUT, 16 conns", f"{bare.rate:,.0f} req/s",
         f"server CPU {bare_cpu_us:.0f} µs/req; generator CPU {gen_cpu_us:.0f} µs/req (max {1e6 / gen_cpu_us:,.0f} req/s)", ""),
        ("tailbucket durable signed 1 KiB appends, 16 objects", f"{ours.rate:,.0f} req/s",
         f"{statistics.median(ratios):.2f}x ceiling (median of {ROUNDS} paired rounds, {min(ratios):.2f}-{max(ratios):.2f}; "
         f"pooled {ours.rate / bare.rate:.2f}x), {batch:.1f} appends per group commit; "
         f"server CPU {cpu_us:.0f} µs/append with its commit process, {loop_cpu_us:.0f} on the event loop's thread (busy {loop_busy:.0%}); "
         f"the hypervisor took {steal:.0%} of this machine's CPU meanwhile",
         "target >= 0.5x"),
    ]  # fmt: skip


def _large_appends(bare: subprocess.Popen, bare_port: int, ours: subprocess.Popen, port: int,
                   large_count: int) -> list[tuple[str, str, str, str]]:
    """Bare 1 MiB PUTs vs our 64 MiB appends, one connection each, in alternating
    rounds of 64 MiB a side (as the small appends), each side's rate over its time
    in all rounds; each server's CPU per MiB (the steadier signal on a shared machine)
    and the generator's own."""
    chunk = memoryview(os.urandom(MiB))
    bare_head = sign("PUT", bare_port, "/x", body_length=MiB, payload="UNSIGNED-PAYLOAD")
    bare_s = ours_s = bare_cpu = ours_cpu = gen_cpu = 0.0
    for i in range(large_count):
        requests = [[bare_head + bytes(chunk)] * (LARGE // MiB)]
        cpu, gen, t = cpu_seconds(bare.pid), time.process_time(), time.perf_counter()
        loadgen.run(bare_port, requests)
        bare_s += time.perf_counter() - t
        gen_cpu += time.process_time() - gen
        bare_cpu += cpu_seconds(bare.pid) - cpu
        head = sign("PUT", port, "/bench/large", body_length=LARGE, payload="UNSIGNED-PAYLOAD",
                    headers={"x-amz-write-offset-bytes": str(i * LARGE)})
        cpu, gen, t = cpu_seconds(ours.pid), time.process_time(), time.perf_counter()
        assert loadgen.put_stream(port, head, chunk, LARGE // MiB) == 200
        ours_s += time.perf_counter() - t
        gen_cpu += time.process_time() - gen
        ours_cpu += cpu_seconds(ours.pid) - cpu
    mib = large_count * LARGE / MiB
    bare_mbs, large_mbs = large_count * LARGE / bare_s / 1e6, large_count * LARGE / ours_s / 1e6
    return [
        ("bare trio+h11, 1 MiB PUT bodies", f"{bare_mbs:,.0f} MB/s", f"server CPU {bare_cpu / mib * 1e3:.2f} ms/MiB, "
         f"generator {gen_cpu / (2 * mib) * 1e3:.2f} ms/MiB", ""),
        ("tailbucket 64 MiB appends (fsync)", f"{large_mbs:,.0f} MB/s", f"{large_mbs / bare_mbs:.2f}x bare "
         f"({large_count} alternating rounds), server CPU {ours_cpu / mib * 1e3:.2f} ms/MiB", "target >= 0.7x"),
    ]  # fmt: skip


def _measure(bare: subprocess.Popen, bare_port: int, per_conn: int, large_count: int, rss_gib: int,
             large_only: bool) -> list[tuple[str, str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        server = Server.start(Path(tmp) / "data", Path(tmp) / "server.log")
        try:
            port = server.port
            loadgen.run(port, [[sign("PUT", port, "/bench")]])
            if not large_only:
                rows += _small_appends(bare_port, port, per_conn, bare.pid, server.proc.pid)
            rows += _large_appends(bare, bare_port, server.proc, port, large_count)
            t = time.perf_counter()
            status, got = loadgen.get_stream(port, sign("GET", port, "/bench/large"))
            assert status == 200 and got == large_count * LARGE
            rows.append(("tailbucket GET of that object", f"{got / (time.perf_counter() - t) / 1e6:,.0f} MB/s", "", ""))
        finally:
            server.stop()
        if large_only:
            return rows
        # Peak RSS of a fresh server while a 2 GiB object goes in and out.
        server = Server.start(Path(tmp) / "rss", Path(tmp) / "rss.log")
        try:
            port = server.port
            loadgen.run(port, [[sign("PUT", port, "/rss")]])
            size = rss_gib * 1024 * MiB
            head = sign("PUT", port, "/rss/big", body_length=size, payload="UNSIGNED-PAYLOAD")
            assert loadgen.put_stream(port, head, memoryview(os.urandom(MiB)), size // MiB) == 200
            status, got = loadgen.get_stream(port, sign("GET", port, "/rss/big"))
            assert status == 200 and got == size
            peaks = [peak_rss_mib(server.proc.pid), *map(peak_rss_mib, children(server.proc.pid))]
            rows.append((f"server peak RSS, {rss_gib} GiB PUT + GET", f"{sum(peaks):.0f} MiB",
                         " + ".join(f"{peak:.0f}" for peak in peaks) + " MiB (server + commit process)", "target < 150 MiB"))
        finally:
            server.stop()
    return rows


if __name__ == "__main__":  # python -m bench.server_bench [--large-only]
    from bench.__main__ import print_table

    print_table("server", measure(large_only="--large-only" in sys.argv))
