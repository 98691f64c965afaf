"""The agent's Prometheus metrics, in a registry of its own (one per agent, so tests can run several).

Names follow the Prometheus conventions (base units, ``_total`` for counters,
``_bytes``/``_seconds`` suffixes).  What each one counts:

* ``tailbucket_agent_files_watched``: streams with a live tailer;
* ``tailbucket_agent_read_bytes_total``: log bytes read and handed to the shipper;
* ``tailbucket_agent_shipped_bytes_total``: log bytes whose append was acknowledged;
* ``tailbucket_agent_appends_total``: acknowledged appends;
* ``tailbucket_agent_retries_total``: requests sent again after no answer, a 5xx or throttling;
* ``tailbucket_agent_conflicts_total``: streams stopped because their object was not what the agent expected;
* ``tailbucket_agent_stream_lag_bytes{stream}``: file size minus bytes shipped, per stream;
* ``tailbucket_agent_line_to_visible_seconds``: from the moment a batch's first
  line was read to the moment its append was acknowledged (so readable in the
  object), one observation per batch;
* ``tailbucket_agent_read_ahead_bytes``: bytes read and not yet acknowledged;
* ``tailbucket_agent_sink_ready``: 1 while the sink answers, 0 while it does not.

The lag needs a ``stat`` per stream, so ``render`` is blocking: the status
endpoint calls it in a worker thread with the streams' positions taken in the
trio thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from agent.fingerprint import FileIdentity

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the Prometheus text exposition format
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class StreamPosition:
    """Where one stream's shipping stands: ``offset`` bytes of ``identity`` are in the object."""

    stream: str
    path: str
    identity: FileIdentity | None
    offset: int


def lag_bytes(position: StreamPosition) -> int:
    """File size minus bytes shipped (blocking: one ``stat``).

    When the path now names another file than the one shipped from (a
    rotation in progress), the whole new file is counted: a lower bound.
    """
    try:
        st = os.stat(position.path)
    except OSError:
        return 0
    identity = position.identity
    if identity is not None and (st.st_dev, st.st_ino) == (identity.dev, identity.ino):
        return max(0, st.st_size - position.offset)
    return st.st_size


class _LagCollector:
    """Renders the lag gauge for the positions it was made with (one per scrape)."""

    def __init__(self, positions: Sequence[StreamPosition]) -> None:
        self.positions = positions

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "tailbucket_agent_stream_lag_bytes", "Bytes in the log file not yet shipped, per stream.", labels=["stream"]
        )
        for position in self.positions:
            family.add_metric([position.stream], lag_bytes(position))
        yield family


class AgentMetrics:
    """Every metric the agent exports; the shipper and the app update them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.files_watched = Gauge("tailbucket_agent_files_watched", "Streams with a live tailer.", registry=r)
        self.read_bytes = Counter("tailbucket_agent_read_bytes", "Log bytes read and handed to the shipper.", registry=r)
        self.shipped_bytes = Counter("tailbucket_agent_shipped_bytes", "Log bytes whose append was acknowledged.", registry=r)
        self.appends = Counter("tailbucket_agent_appends", "Acknowledged appends.", registry=r)
        self.shared_appends = Counter("tailbucket_agent_shared_appends",
                                      "Acknowledged appends that shared an AppendObjects request.", registry=r)
        self.retries = Counter("tailbucket_agent_retries", "Requests sent again after no answer, a 5xx or throttling.", registry=r)
        self.conflicts = Counter("tailbucket_agent_conflicts", "Streams stopped because their object changed under them.", registry=r)
        self.latency = Histogram(
            "tailbucket_agent_line_to_visible_seconds",
            "From a batch's first line being read to its append being acknowledged.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.read_ahead = Gauge("tailbucket_agent_read_ahead_bytes", "Bytes read and not yet acknowledged.", registry=r)
        self.sink_ready = Gauge("tailbucket_agent_sink_ready", "1 while the sink answers, 0 while it does not.", registry=r)

    def appends_made(self) -> int:
        """Acknowledged appends so far (the app sizes the append rate by their CPU)."""
        return int(self.registry.get_sample_value("tailbucket_agent_appends_total") or 0)

    def watch_read_ahead(self, in_use: Callable[[], float]) -> None:
        self.read_ahead.set_function(in_use)

    def render(self, positions: Iterable[StreamPosition] = ()) -> bytes:
        """The text exposition (blocking: stats every stream's file for its lag)."""
        lag = CollectorRegistry()
        lag.register(_LagCollector(tuple(positions)))
        return generate_latest(self.registry) + generate_latest(lag)
