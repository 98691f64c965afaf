"""Storage-only microbenchmark: durable 1 KiB appends from 16 concurrent tasks on
16 objects, with fsync on and off.  Prints appends/s and the mean batch size
of the group commit, and the CPU time (all threads) per append -- on a busy
machine appends/s wanders, CPU per append is the steadier number.

    .venv/bin/python -m bench.storage_bench [--seconds 3] [--tasks 16] [--size 1024]

Not a test: numbers depend on the disk.  The server's target (≥ ~5,000 signed
appends/s through HTTP on 2 cores) needs storage well above that.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio

from server.storage import open_storage


async def _one_body(data: bytes):
    yield data


async def run(fsync: bool, seconds: float, tasks: int, size: int) -> tuple[float, float, float]:
    payload = b"x" * size
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        async with open_storage(Path(tmp), fsync=fsync) as storage:
            await storage.create_bucket("bench")
            count = 0
            deadline = time.perf_counter() + seconds

            async def appender(n: int) -> None:
                nonlocal count
                key = f"host/var/log/app-{n}.log"
                offset = 0
                while time.perf_counter() < deadline:
                    info = await storage.write_object("bench", key, _one_body(payload), offset=offset)
                    offset = info.size
                    count += 1

            started = time.perf_counter()
            cpu_started = time.process_time()
            async with trio.open_nursery() as nursery:
                for n in range(tasks):
                    nursery.start_soon(appender, n)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu_started
            committer = storage._committer
            batch = committer.jobs / max(committer.batches, 1)
    return count / elapsed, batch, cpu / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    import structlog

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # keep the output to the numbers
    for fsync in (True, False):
        rate, batch, cpu = trio.run(run, fsync, args.seconds, args.tasks, args.size)
        print(
            f"fsync={'on ' if fsync else 'off'}  {args.tasks} tasks x {args.size} B appends:"
            f"  {rate:8.0f} appends/s  {cpu * 1e6:6.1f} µs CPU/append  (mean group-commit batch {batch:.1f})"
        )


if __name__ == "__main__":
    main()
