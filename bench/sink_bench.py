"""Sink benchmark: ``tail-to-bucket`` of a 1 GiB file next to ``aws s3 cp`` of the same file.

Both go to the same fresh server in the same run, so the ratio holds on a
noisy machine.  The ceiling is the same number of 16 MiB appends sent by the
load generator (pre-signed heads, one reused body, no client work at all):
what any appending client could reach against this server.  The aws CLI is told to use one PUT (our server has no
multipart upload; its default 8 MiB multipart threshold is raised to 5 GB in
a private config file), which is its fastest path to this server.  The peak
RSS is the child's own high-water mark, from ``os.wait4``'s rusage.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from tests.support import ACCESS_KEY, REPO, SECRET_KEY, ServerProcess, client_env

MiB = 1024 * 1024
APPEND = 16 * MiB  # tail-to-bucket's default --batch-bytes
BIN = Path(sys.executable).parent


def write_source(path: Path, size: int) -> None:
    """Incompressible bytes (the pattern of one random MiB, shifted per MiB so no two are alike)."""
    block = os.urandom(MiB + 4096)
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(block[i % 4096 : i % 4096 + MiB])
        f.flush()
        os.fsync(f.fileno())  # no writeback of the source competing with the first upload


def run_timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of one child process, which must succeed."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {stderr.decode(errors='replace')[-500:]}")
    return seconds, usage.ru_maxrss / 1024


def raw_appends(port: int, size: int) -> float:
    """MB/s of sequential APPEND-byte appends with no client-side cost (the ceiling)."""
    chunk = memoryview(os.urandom(MiB))
    started = time.perf_counter()
    for offset in range(0, size, APPEND):
        head = loadgen.signed_request("PUT", f"127.0.0.1:{port}", "/bench/raw", access_key=ACCESS_KEY,
                                      secret=SECRET_KEY, body_length=APPEND, payload="UNSIGNED-PAYLOAD",
                                      headers={"x-amz-write-offset-bytes": str(offset)})
        assert loadgen.put_stream(port, head, chunk, APPEND // MiB) == 200
    return size / (time.perf_counter() - started) / 1e6


def measure(size: int = 1024 * MiB) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(dir=REPO) as tmp:
        source, config = Path(tmp) / "source.bin", Path(tmp) / "aws-config"
        write_source(source, size)
        config.write_text("[default]\ns3 =\n  multipart_threshold = 5GB\n")
        server = ServerProcess(Path(tmp) / "data").start()
        try:
            env = client_env(AWS_ENDPOINT_URL=server.url, AWS_CONFIG_FILE=str(config))
            subprocess.run([str(BIN / "aws"), "s3", "mb", "s3://bench"], env=env, check=True, capture_output=True)
            label = f"{size // MiB} MiB file"
            ceiling = raw_appends(server.port, size)
            rows.append((f"raw {APPEND // MiB} MiB appends, {label} (load generator)", f"{ceiling:,.0f} MB/s",
                         "ceiling for any appender", ""))
            aws_s, aws_rss = run_timed([str(BIN / "aws"), "s3", "cp", "--only-show-errors", str(source),
                                        "s3://bench/aws.bin"], env)
            aws_mbs = size / aws_s / 1e6
            rows.append((f"aws s3 cp, {label} (one PUT)", f"{aws_mbs:,.0f} MB/s", f"peak RSS {aws_rss:.0f} MiB", ""))
            ours_s, ours_rss = run_timed([str(BIN / "tail-to-bucket"), "--quiet", str(source),
                                          "s3://bench/tail.bin"], env)
            ours_mbs = size / ours_s / 1e6
            rows.append((f"tail-to-bucket, {label} ({APPEND // MiB} MiB appends, fsync)", f"{ours_mbs:,.0f} MB/s",
                         f"{ours_mbs / aws_mbs:.2f}x aws s3 cp, {ours_mbs / ceiling:.2f}x ceiling", "target >= 1.5x aws"))
            rows.append(("tail-to-bucket peak RSS", f"{ours_rss:.0f} MiB", "", "target < 80 MiB"))
            check = subprocess.run([str(BIN / "aws"), "s3api", "head-object", "--bucket", "bench", "--key", "tail.bin",
                                    "--query", "ContentLength"], env=env, check=True, capture_output=True, text=True)
            assert int(check.stdout) == size, check.stdout
        finally:
            server.stop()
    return rows


if __name__ == "__main__":
    from bench.__main__ import print_table

    size = int(sys.argv[1]) * MiB if len(sys.argv) > 1 else 1024 * MiB
    print_table("sink (issue: the append sink and tail-to-bucket)", measure(size))
