"""Sink benchmark: ``tail-to-bucket`` of a 1 GiB file next to ``aws s3 cp`` of the same file.

Both go to the same fresh server in the same run, in alternating rounds
(ceiling, aws, ours, ceiling, aws, ours...), each side's rate over its time in
all rounds, so the ratio holds on a noisy machine.  Each client's CPU per MiB
(its own, from ``os.wait4``) and the server's while serving it are the steadier
signals.  The ceiling is the same number of 16 MiB appends sent by the
load generator (pre-signed heads, one reused body, no client work at all):
what any appending client could reach against this server.  The aws CLI is told to use one PUT (our server has no
multipart upload; its default 8 MiB multipart threshold is raised to 5 GB in
a private config file), which is its fastest path to this server.  The peak
RSS is the child's own high-water mark (``HighWater``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from tests.support import ACCESS_KEY, REPO, SECRET_KEY, ServerProcess, client_env

MiB = 1024 * 1024
APPEND = 16 * MiB  # tail-to-bucket's default --batch-bytes
BIN = Path(sys.executable).parent
ROUNDS = 2


def write_source(path: Path, size: int) -> None:
    """Incompressible bytes (the pattern of one random MiB, shifted per MiB so no two are alike)."""
    block = os.urandom(MiB + 4096)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(block[i % 4096 : i % 4096 + MiB])
        f.flush()
        os.fsync(f.fileno())  # no writeback of the source competing with the first upload


@dataclass
class Run:
    """One child process's run: wall seconds, peak RSS (MiB), CPU seconds (user + system)."""

    seconds: float
    rss_mib: float
    cpu: float


class HighWater(threading.Thread):
    """A child's own peak RSS: the VmHWM of its memory (fresh at its exec), sampled every 10 ms until it ends.

    Why not ``os.wait4``'s ru_maxrss: Linux carries the parent's high-water mark into
    a vfork'd child's (measured: ``python -c pass`` started by a 300 MiB parent
    reports 311 MiB), so a bench that once held a large buffer would blame its child.
    A peak in a child's last 10 ms could be missed."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._status = Path(f"/proc/{pid}/status")
        self.kib = 0
        self.ended = threading.Event()

    def run(self) -> None:
        while not self.ended.wait(0.01):
            try:
                text = self._status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmHWM:"):
                    self.kib = max(self.kib, int(line.split()[1]))


def run_timed(cmd: list[str], env: dict[str, str]) -> Run:
    """Run one child process, which must succeed."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    high = HighWater(proc.pid)  # Popen returned: the child has exec'd, its memory is its own
    high.start()
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    high.ended.set()
    high.join()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {stderr.decode(errors='replace')[-500:]}")
    return Run(seconds, high.kib / 1024, usage.ru_utime + usage.ru_stime)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    """One side's totals over all rounds."""

    seconds: float = 0.0
    cpu: float = 0.0  # the client's
    server_cpu: float = 0.0
    rss_mib: float = 0.0

    def add(self, run: Run, server_cpu: float) -> None:
        self.seconds += run.seconds
        self.cpu += run.cpu
        self.server_cpu += server_cpu
        self.rss_mib = max(self.rss_mib, run.rss_mib)

    def mbs(self, size: int) -> float:
        return size / self.seconds / 1e6

    def cpu_note(self, mib: float) -> str:
        return f"client CPU {self.cpu / mib * 1e3:.2f} ms/MiB, server {self.server_cpu / mib * 1e3:.2f} ms/MiB"


def raw_appends(port: int, size: int, key: str) -> float:
    """Seconds for sequential APPEND-byte appends of ``size`` bytes with no client-side cost (the ceiling)."""
    chunk = memoryview(os.urandom(MiB))
    started = time.perf_counter()
    for offset in range(0, size, APPEND):
        head = loadgen.signed_request("PUT", f"127.0.0.1:{port}", f"/bench/{key}", access_key=ACCESS_KEY,
                                      secret=SECRET_KEY, body_length=APPEND, payload="UNSIGNED-PAYLOAD",
                                      headers={"x-amz-write-offset-bytes": str(offset)})
        assert loadgen.put_stream(port, head, chunk, APPEND // MiB) == 200
    return time.perf_counter() - started


def measure(size: int = 1024 * MiB, rounds: int = ROUNDS) -> list[tuple[str, str, str, str]]:
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        source, config = Path(tmp) / "source.bin", Path(tmp) / "aws-config"
        write_source(source, size)
        config.write_text("[default]\ns3 =\n  multipart_threshold = 5GB\n")
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            assert server.proc is not None
            env = client_env(AWS_ENDPOINT_URL=server.url, AWS_CONFIG_FILE=str(config))
            subprocess.run([str(BIN / "aws"), "s3", "mb", "s3://bench"], env=env, check=True, capture_output=True)
            raw_s, raw_cpu, aws, ours = 0.0, 0.0, Side(), Side()
            for n in range(rounds):
                before = cpu_seconds(server.proc.pid)
                raw_s += raw_appends(server.port, size, f"raw{n}.bin")
                raw_cpu += cpu_seconds(server.proc.pid) - before
                for side, cmd in (
                    (aws, [str(BIN / "aws"), "s3", "cp", "--only-show-errors", str(source), f"s3://bench/aws{n}.bin"]),
                    (ours, [str(BIN / "tail-to-bucket"), "--quiet", str(source), f"s3://bench/tail{n}.bin"]),
                ):
                    before = cpu_seconds(server.proc.pid)
                    run = run_timed(cmd, env)
                    side.add(run, cpu_seconds(server.proc.pid) - before)
                check = subprocess.run([str(BIN / "aws"), "s3api", "head-object", "--bucket", "bench", "--key",
                                        f"tail{n}.bin", "--query", "ContentLength"], env=env, check=True,
                                       capture_output=True, text=True)
                assert int(check.stdout) == size, check.stdout
        finally:
            server.stop()
    label, mib = f"{size // MiB} MiB file", rounds * size / MiB
    ceiling = rounds * size / raw_s / 1e6
    return [
        (f"raw {APPEND // MiB} MiB appends, {label} (load generator)", f"{ceiling:,.0f} MB/s",
         f"ceiling for any appender ({rounds} alternating rounds), server CPU {raw_cpu / mib * 1e3:.2f} ms/MiB", ""),
        (f"aws s3 cp, {label} (one PUT)", f"{aws.mbs(rounds * size):,.0f} MB/s",
         f"peak RSS {aws.rss_mib:.0f} MiB, {aws.cpu_note(mib)}", ""),
        (f"tail-to-bucket, {label} ({APPEND // MiB} MiB appends, fsync)", f"{ours.mbs(rounds * size):,.0f} MB/s",
         f"{ours.mbs(rounds * size) / aws.mbs(rounds * size):.2f}x aws s3 cp, "
         f"{ours.mbs(rounds * size) / ceiling:.2f}x ceiling, {ours.cpu_note(mib)}", "target >= 1.5x aws"),
        ("tail-to-bucket peak RSS", f"{ours.rss_mib:.0f} MiB", "", "target < 80 MiB"),
    ]  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import print_table

    size = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 1024 * MiB
    print_table("sink (issue: the append sink and tail-to-bucket)", measure(size))
