"""Server benchmarks: small durable appends, large appends, GET, and peak RSS — each next to its ceiling.

The ceiling is a bare trio + h11 server (no storage, no auth) measured in the
same run by the same load generator, so the ratios hold on a noisy machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from tests.support import ACCESS_KEY, REPO, SECRET_KEY, ServerProcess

CONNECTIONS = 16
SMALL = 1024
LARGE = 64 * 1024 * 1024
MiB = 1024 * 1024


def start_bare() -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.bare_server"], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the port, once it listens
    if not line.strip().isdigit():
        raise RuntimeError("bare server did not start")
    return proc, int(line)


def sign(method: str, port: int, path: str, **kw) -> bytes:
    return loadgen.signed_request(method, f"127.0.0.1:{port}", path, access_key=ACCESS_KEY, secret=SECRET_KEY, **kw)


def small_appends(port: int, per_conn: int, bucket: str = "bench") -> list[list[bytes]]:
    body = os.urandom(SMALL)
    return [
        [sign("PUT", port, f"/{bucket}/obj{c}", body=body, headers={"x-amz-write-offset-bytes": str(i * SMALL)})
         for i in range(per_conn)]
        for c in range(CONNECTIONS)
    ]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(per_conn: int = 1500, large_count: int = 8, rss_gib: int = 2) -> list[tuple[str, str, str, str]]:
    bare, bare_port = start_bare()
    try:
        return _measure(bare_port, per_conn, large_count, rss_gib)
    finally:
        bare.terminate()
        bare.wait()


def _measure(bare_port: int, per_conn: int, large_count: int, rss_gib: int) -> list[tuple[str, str, str, str]]:
    rows = []
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            port = server.port
            loadgen.run(port, [[sign("PUT", port, "/bench")]])
            # Small appends: the generator against the bare server first (the ceiling and its own cost).
            cpu = time.process_time()
            ceiling = loadgen.run(bare_port, small_appends(bare_port, per_conn))
            gen_cpu_us = (time.process_time() - cpu) / ceiling.requests * 1e6
            rows.append(("bare trio+h11, 1 KiB PUT, 16 conns", f"{ceiling.rate:,.0f} req/s",
                         f"generator CPU {gen_cpu_us:.0f} µs/req (max {1e6 / gen_cpu_us:,.0f} req/s)", ""))
            ours = loadgen.run(port, small_appends(port, per_conn))
            assert ours.statuses == {200: ours.requests}, ours.statuses
            rows.append(("tailbucket durable signed 1 KiB appends, 16 objects", f"{ours.rate:,.0f} req/s",
                         f"{ours.rate / ceiling.rate:.2f}x ceiling", "target >= 0.5x"))
            # Large bodies: bare 1 MiB PUTs vs 64 MiB appends, one connection each.
            chunk = memoryview(os.urandom(MiB))
            n = large_count * 64
            bare_head = sign("PUT", bare_port, "/x", body_length=MiB, payload="UNSIGNED-PAYLOAD")
            t = time.perf_counter()
            loadgen.run(bare_port, [[bare_head + bytes(chunk)] * n])
            bare_mbs = n * MiB / (time.perf_counter() - t) / 1e6
            rows.append(("bare trio+h11, 1 MiB PUT bodies", f"{bare_mbs:,.0f} MB/s", "", ""))
            t = time.perf_counter()
            for i in range(large_count):
                head = sign("PUT", port, "/bench/large", body_length=LARGE, payload="UNSIGNED-PAYLOAD",
                            headers={"x-amz-write-offset-bytes": str(i * LARGE)})
                assert loadgen.put_stream(port, head, chunk, LARGE // MiB) == 200
            large_mbs = large_count * LARGE / (time.perf_counter() - t) / 1e6
            rows.append(("tailbucket 64 MiB appends (fsync)", f"{large_mbs:,.0f} MB/s",
                         f"{large_mbs / bare_mbs:.2f}x bare", "target >= 0.7x"))
            t = time.perf_counter()
            status, got = loadgen.get_stream(port, sign("GET", port, "/bench/large"))
            assert status == 200 and got == large_count * LARGE
            rows.append(("tailbucket GET of that object", f"{got / (time.perf_counter() - t) / 1e6:,.0f} MB/s", "", ""))
        finally:
            server.stop()
        # Peak RSS of a fresh server while a 2 GiB object goes in and out.
        server = ServerProcess(Path(tmp) / "rss").start()
        try:
            port = server.port
            loadgen.run(port, [[sign("PUT", port, "/rss")]])
            size = rss_gib * 1024 * MiB
            head = sign("PUT", port, "/rss/big", body_length=size, payload="UNSIGNED-PAYLOAD")
            assert loadgen.put_stream(port, head, chunk, size // MiB) == 200
            status, got = loadgen.get_stream(port, sign("GET", port, "/rss/big"))
            assert status == 200 and got == size
            rows.append((f"server peak RSS, {rss_gib} GiB PUT + GET", f"{peak_rss_mib(server.proc.pid):.0f} MiB", "",
                         "target < 150 MiB"))
        finally:
            server.stop()
    return rows
