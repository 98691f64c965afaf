"""A demo application's log: lines at a steady rate, rotated by size as logrotate would.

Rotation renames ``app.log`` to ``app.log.N`` (N counting up, never reused)
and starts a new ``app.log``; the agent follows the renamed file to its end
and then the new one, so the object is all generations concatenated in order.
Each rotation is announced on stdout (``rotated app.log -> app.log.N``), the
runner passes it on.  SIGTERM/SIGINT stop it after a whole line: exit 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

LEVELS = ("INFO", "INFO", "INFO", "DEBUG", "WARN")
PATHS = ("/", "/login", "/cart", "/api/items", "/health")


def line(n: int) -> bytes:
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return f"{now} {LEVELS[n % len(LEVELS)]} demo request={n} path={PATHS[n % len(PATHS)]} ms={n * 7 % 113}\n".encode()


def rotate(log: Path, generation: int) -> Path:
    rotated = log.with_name(f"{log.name}.{generation}")
    os.rename(log, rotated)
    return rotated


def run(log: Path, rate: float, rotate_bytes: int, stop: threading.Event) -> int:
    """Write until ``stop``; returns the number of lines written."""
    log.parent.mkdir(parents=True, exist_ok=True)
    generation = 1 + max((int(p.suffix[1:]) for p in log.parent.glob(log.name + ".*") if p.suffix[1:].isdigit()), default=0)
    n = 0
    out = open(log, "ab")
    try:
        while not stop.wait(1.0 / rate):
            out.write(line(n))
            out.flush()
            n += 1
            if out.tell() >= rotate_bytes:
                out.close()
                rotated = rotate(log, generation)
                print(f"rotated {log.name} -> {rotated.name}", flush=True)
                generation += 1
                out = open(log, "ab")
    finally:
        out.close()
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo.generator", description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path, help="the log file to write (rotations beside it)")
    parser.add_argument("--rate", type=float, default=20.0, help="lines per second (default 20)")
    parser.add_argument("--rotate-bytes", type=int, default=64 * 1024, help="rotate when app.log reaches this size")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    written = run(args.log, args.rate, args.rotate_bytes, stop)
    print(f"generator stopped after {written} lines", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
