"""The server's Prometheus metrics, served at ``GET /_tailbucket/metrics``.

Each server owns a ``CollectorRegistry`` (several servers may share a process
in tests, and the library's global registry would mix them).  The app records
one observation per request, where it logs the ``request`` event (counted in
plain dicts, handed to prometheus_client at each scrape); the storage
gauges are counted on scrape, at most every ``stats_cache_seconds``, so a
scraper polling often costs one index scan per interval, not per scrape.

Names (text exposition format, prometheus_client's conventions):
  tailbucket_requests_total{operation,status}     requests answered
  tailbucket_received_bytes_total{operation}      request body bytes (Content-Length)
  tailbucket_sent_bytes_total{operation}          response body bytes
  tailbucket_append_duration_seconds              histogram of acknowledged appends
                                                  (PutObject with x-amz-write-offset-bytes, 2xx;
                                                  each AppendObjects item that lands, 200, timed
                                                  from its start to its durable write)
  tailbucket_stored_objects, tailbucket_stored_bytes   what the storage holds
  tailbucket_commit_batches_total, tailbucket_committed_writes_total
                                                  group commits and the writes in them (their
                                                  ratio is the average batch: concurrent writes
                                                  sharing one flush and one transaction)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# Seconds: a fsynced append on a local disk takes about a millisecond; a busy one, up to seconds.
APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
FLUSH_EVERY = 1024  # requests counted between two hand-overs to the prometheus metrics, at most

StatsSource = Callable[[], Awaitable[tuple[int, int]]]  # (objects, bytes), e.g. ``Storage.stats``
CommitSource = Callable[[], tuple[int, int]]  # (group commits, writes in them), e.g. ``Storage.commit_counts``


class ServerMetrics:
    """Counters and histograms for one server, and its text exposition."""

    def __init__(
        self, *, stats_cache_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic,
        commits: CommitSource | None = None,
    ) -> None:  # fmt: skip
        self.registry = CollectorRegistry(auto_describe=True)
        self._stats_ttl = stats_cache_seconds
        self._clock = clock
        self._stats_at: float | None = None
        self.requests = Counter(
            "tailbucket_requests", "Requests answered, by S3 operation and HTTP status.",
            ["operation", "status"], registry=self.registry,
        )  # fmt: skip
        self.received = Counter(
            "tailbucket_received_bytes", "Request body bytes (Content-Length), by operation.",
            ["operation"], registry=self.registry,
        )  # fmt: skip
        self.sent = Counter(
            "tailbucket_sent_bytes", "Response body bytes, by operation.", ["operation"], registry=self.registry
        )
        self.append_duration = Histogram(
            "tailbucket_append_duration_seconds", "Time to acknowledge an append (a PutObject: request received to answer ready;"
            " an AppendObjects item: its start to its durable write).",
            buckets=APPEND_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.stored_objects = Gauge("tailbucket_stored_objects", "Objects stored.", registry=self.registry)
        self.stored_bytes = Gauge("tailbucket_stored_bytes", "Object bytes stored.", registry=self.registry)
        if commits is not None:
            self.registry.register(_CommitCounts(commits))
        self._requests_of: dict[tuple[str, int], Counter] = {}
        self._received_of: dict[str, Counter] = {}
        self._sent_of: dict[str, Counter] = {}
        # Held since the last hand-over to the prometheus metrics (``flush``).
        self._requests: dict[tuple[str, int], int] = {}
        self._received: dict[str, int] = {}
        self._sent: dict[str, int] = {}
        self._durations: list[float] = []
        self._held = 0

    def __repr__(self) -> str:
        return f"ServerMetrics(stats_cache_seconds={self._stats_ttl}, stats_at={self._stats_at}, held={self._held})"

    def observe(
        self, operation: str, status: int, *, bytes_in: int, bytes_out: int, seconds: float, appending: bool
    ) -> None:
        """Record one answered request.  Counted in plain dicts and handed to the prometheus
        metrics at the next scrape (or every ``FLUSH_EVERY`` requests): each of their
        ``inc``/``observe`` takes a lock and a few checks, ~3 µs of every request's event-loop time."""
        requests = self._requests
        key = (operation, status)
        requests[key] = requests.get(key, 0) + 1
        if bytes_in:
            self._received[operation] = self._received.get(operation, 0) + bytes_in
        if bytes_out:
            self._sent[operation] = self._sent.get(operation, 0) + bytes_out
        if appending and 200 <= status < 300:
            self._durations.append(seconds)
        self._held += 1
        if self._held >= FLUSH_EVERY:
            self.flush()

    def observe_append(self, seconds: float) -> None:
        """Record one acknowledged append that is not a request of its own (an AppendObjects item)."""
        self._durations.append(seconds)
        self._held += 1
        if self._held >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        """Hand what was counted since the last flush to the prometheus metrics."""
        requests, self._requests = self._requests, {}
        received, self._received = self._received, {}
        sent, self._sent = self._sent, {}
        durations, self._durations = self._durations, []
        self._held = 0
        for (operation, status), count in requests.items():
            # labels() looks its child up under a lock: each child is looked up once and kept.
            child = self._requests_of.get((operation, status))
            if child is None:
                child = self._requests_of[operation, status] = self.requests.labels(operation, str(status))
            child.inc(count)
        for operation, count in received.items():
            child = self._received_of.get(operation) or self._received_of.setdefault(operation, self.received.labels(operation))
            child.inc(count)
        for operation, count in sent.items():
            child = self._sent_of.get(operation) or self._sent_of.setdefault(operation, self.sent.labels(operation))
            child.inc(count)
        for seconds in durations:
            self.append_duration.observe(seconds)

    async def render(self, stats: StatsSource) -> bytes:
        """The exposition text, with the storage gauges refreshed if they are older than the cache time."""
        now = self._clock()
        if self._stats_at is None or now - self._stats_at >= self._stats_ttl:
            objects, size = await stats()
            self.stored_objects.set(objects)
            self.stored_bytes.set(size)
            self._stats_at = now
        self.flush()
        return generate_latest(self.registry)


class _CommitCounts(Collector):
    """The group committer's own counts, read at scrape time (it keeps them anyway)."""

    def __init__(self, source: CommitSource) -> None:
        self._source = source

    def collect(self) -> Iterator[CounterMetricFamily]:
        batches, writes = self._source()
        yield CounterMetricFamily(
            "tailbucket_commit_batches", "Group commits: one data flush and one index transaction each.", value=batches
        )
        yield CounterMetricFamily("tailbucket_committed_writes", "Writes those group commits carried.", value=writes)
