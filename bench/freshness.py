"""Freshness: how long after its write a line is in its object, observed from another process.

A ``SizePoller`` (a spawned process, so it takes neither the writer's GIL nor
the agent's) asks the server for the objects' sizes every ``interval`` and
notes each change with the time the answer arrived (``time.monotonic``,
comparable across processes).  One ListObjectsV2 answers for all the
objects under a prefix: it costs the server about 1.5 ms of CPU for 10 keys
where 10 HEADs cost about 10 ms, and the agent under test shares the cores.

A line's freshness is the arrival time of the first answer that shows its
object at least as long as the write that carried it, minus that write's
time: an upper bound (it includes up to one polling interval and one
request's latency).  ``line_latencies`` is the pure matching of the two logs.
"""

from __future__ import annotations

import bisect
import multiprocessing
import time
from dataclasses import dataclass

from bench.logwriter import WriteLog

_SPAWN = multiprocessing.get_context("spawn")
RESIGN_EVERY = 300.0  # seconds; a signed request stays valid for 15 minutes


@dataclass
class SizeLog:
    """One object's sizes as the poller saw them change: ``sizes[i]`` first seen at ``times[i]``."""

    sizes: list[int]
    times: list[float]


def _poll(port: int, bucket: str, prefix: str, interval: float, stop, out) -> None:  # type: ignore[no-untyped-def]
    from bench import raws3

    seen: dict[str, SizeLog] = {}
    polls = 0
    query = f"list-type=2&max-keys=1000&prefix={raws3.quote(prefix, safe='')}"
    signed_at, head = -RESIGN_EVERY, b""
    s3: raws3.RawS3 | None = None
    due = time.monotonic()
    while not stop.is_set():
        if time.monotonic() - signed_at > RESIGN_EVERY:
            signed_at, head = time.monotonic(), raws3.sign("GET", port, f"/{bucket}", query)
        try:
            s3 = s3 or raws3.RawS3(port)
            answer = s3.request(head)
        except OSError:  # the server is down (an outage on purpose): a new connection next round
            if s3 is not None:
                s3.close()
            s3 = None
            answer = None
        now = time.monotonic()
        if answer is not None and answer.status == 200:
            polls += 1
            for key, size in raws3.KEY_SIZE.findall(answer.body):
                log = seen.setdefault(key.decode(), SizeLog([], []))
                if not log.sizes or int(size) > log.sizes[-1]:
                    log.sizes.append(int(size))
                    log.times.append(now)
        due = max(due + interval, now)
        stop.wait(max(0.0, due - time.monotonic()))  # the polling pace
    if s3 is not None:
        s3.close()
    out.send((seen, polls))
    out.close()


class SizePoller:
    """Polls the sizes of every object under ``prefix`` (at most 1000) until ``stop``."""

    def __init__(self, port: int, bucket: str, prefix: str, interval: float) -> None:
        self._stop = _SPAWN.Event()
        self._receive, send = _SPAWN.Pipe(duplex=False)
        self._proc = _SPAWN.Process(target=_poll, args=(port, bucket, prefix, interval, self._stop, send), daemon=True)
        self._send = send
        self.polls = 0

    def start(self) -> SizePoller:
        self._proc.start()
        self._send.close()
        return self

    def stop(self, timeout: float = 30.0) -> dict[str, SizeLog]:
        self._stop.set()
        if not self._receive.poll(timeout):
            self._proc.kill()
            raise RuntimeError("the size poller did not answer")
        try:
            seen, self.polls = self._receive.recv()
        except EOFError:
            self._proc.join(timeout)
            raise RuntimeError(f"the size poller died (exit code {self._proc.exitcode})") from None
        self._proc.join(timeout)
        return seen


def line_latencies(writes: WriteLog, seen: SizeLog | None) -> tuple[list[float], int]:
    """(latency of every line seen, lines never seen) for one file and its object."""
    latencies: list[float] = []
    missing = 0
    sizes = seen.sizes if seen else []
    for end, at, count in zip(writes.ends, writes.times, writes.counts):
        i = bisect.bisect_left(sizes, end)
        if i == len(sizes):
            missing += count
        else:
            latencies.extend([seen.times[i] - at] * count)  # type: ignore[union-attr]
    return latencies, missing


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]
