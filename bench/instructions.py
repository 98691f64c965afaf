"""Instructions per small append: the server's CPU work counted, not timed.

The small-append row of ``bench.server_bench`` is a ratio of rates, and on
this shared machine it moves with the neighbours' load (0.41x-0.57x in one
run's rounds).  Callgrind counts the instructions a process executes, which
do not depend on what else the machine does: the same code and requests give
the same count to within a fraction of a percent.  So a change to the
request path can be judged here in a minute, before the noisy rates.

Both servers run under ``valgrind --tool=callgrind`` with 16 connections of
signed 1 KiB appends (the same requests as the rate row).  Counting starts
after a warm-up (``callgrind_control --zero``) and ends with a dump; the
figure is instructions per request in the server process (ours: its event
loop and threads, not the commit process, which runs on its own and
un-instrumented).  Instructions are not time: cache misses and system calls
are not in them, and ours run at a lower rate per instruction than the bare
server's (a larger working set), so the rate ratio sits below this one.

Run: ``python -m bench.instructions [REQUESTS_PER_CONNECTION]``, or as part of ``make bench``
(skipped there when valgrind is missing); needs valgrind.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import loadgen
from bench.server_bench import Server, sign, small_appends, start_bare

WARM_UP = 20  # appends per connection before counting starts


def _callgrind(out_dir: Path) -> tuple[str, ...]:
    return ("valgrind", "-q", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.%p")


def _count(pid: int, out_dir: Path, port: int, per_conn: int) -> int:
    """Warm up, then the instructions ``pid`` executes while serving ``per_conn`` appends per connection."""
    loadgen.run(port, small_appends(port, WARM_UP))
    subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
    result = loadgen.run(port, small_appends(port, per_conn, start=WARM_UP))
    if set(result.statuses) != {200}:
        raise RuntimeError(f"appends failed: {result.statuses}")
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    dumps = sorted(out_dir.glob(f"callgrind.{pid}.*"))  # the dump; the file without a suffix comes at exit
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1]) // result.requests
    raise RuntimeError(f"no summary in {dumps[-1]}")


def available() -> bool:
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def measure(per_conn: int = 60) -> list[tuple[str, str, str, str]]:
    if not available():
        raise SystemExit("bench.instructions needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        bare, bare_port = start_bare(_callgrind(out))
        try:
            bare_ir = _count(bare.pid, out, bare_port, per_conn)
        finally:
            bare.terminate()
            bare.wait()
        server = Server.start(out / "data", out / "server.log", _callgrind(out))
        try:
            loadgen.run(server.port, [[sign("PUT", server.port, "/bench")]])
            ours_ir = _count(server.proc.pid, out, server.port, per_conn)
        finally:
            server.stop()
    return [
        ("bare trio+h11, 1 KiB PUT, 16 conns", f"{bare_ir:,} instructions/req", "", ""),
        ("tailbucket durable signed 1 KiB appends", f"{ours_ir:,} instructions/req", f"{ours_ir / bare_ir:.2f}x bare", ""),
    ]


if __name__ == "__main__":
    from bench.__main__ import print_table

    print_table("instructions (callgrind)", measure(*map(int, sys.argv[1:2])))
