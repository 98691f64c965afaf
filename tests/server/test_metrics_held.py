"""ServerMetrics counts requests in plain dicts and hands them to prometheus_client
at each scrape, or every FLUSH_EVERY requests: nothing counted is lost or counted twice."""

from __future__ import annotations

from server.metrics import FLUSH_EVERY, ServerMetrics


async def no_stats() -> tuple[int, int]:
    return 0, 0


def sample(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_scrape_sees_every_request_counted_before_it_once() -> None:
    metrics = ServerMetrics()
    metrics.observe("PutObject", 200, bytes_in=10, bytes_out=0, seconds=0.002, appending=True)
    metrics.observe("GetObject", 200, bytes_in=0, bytes_out=7, seconds=0.001, appending=False)
    assert sample(metrics, "tailbucket_requests_total", operation="PutObject", status="200") == 0  # held
    await metrics.render(no_stats)
    metrics.observe("PutObject", 200, bytes_in=5, bytes_out=0, seconds=0.004, appending=True)
    text = (await metrics.render(no_stats)).decode()
    assert 'tailbucket_requests_total{operation="PutObject",status="200"} 2.0' in text
    assert sample(metrics, "tailbucket_received_bytes_total", operation="PutObject") == 15
    assert sample(metrics, "tailbucket_sent_bytes_total", operation="GetObject") == 7
    assert sample(metrics, "tailbucket_append_duration_seconds_count") == 2
    assert sample(metrics, "tailbucket_append_duration_seconds_bucket", le="0.0025") == 1


async def test_without_scrapes_what_is_held_stays_bounded() -> None:
    metrics = ServerMetrics()
    for _ in range(FLUSH_EVERY + 3):
        metrics.observe("PutObject", 200, bytes_in=1, bytes_out=0, seconds=0.001, appending=True)
    assert sample(metrics, "tailbucket_requests_total", operation="PutObject", status="200") == FLUSH_EVERY
    assert sample(metrics, "tailbucket_append_duration_seconds_count") == FLUSH_EVERY
    await metrics.render(no_stats)
    assert sample(metrics, "tailbucket_requests_total", operation="PutObject", status="200") == FLUSH_EVERY + 3


async def test_appends_inside_a_request_are_held_and_bounded_as_requests_are() -> None:
    """AppendObjects' items (``observe_append``): counted once at the next scrape, handed over every FLUSH_EVERY."""
    metrics = ServerMetrics()
    metrics.observe_append(0.002)
    assert sample(metrics, "tailbucket_append_duration_seconds_count") == 0  # held
    await metrics.render(no_stats)
    await metrics.render(no_stats)
    assert sample(metrics, "tailbucket_append_duration_seconds_count") == 1
    assert sample(metrics, "tailbucket_append_duration_seconds_bucket", le="0.001") == 0
    for _ in range(FLUSH_EVERY):
        metrics.observe_append(0.001)
    assert sample(metrics, "tailbucket_append_duration_seconds_count") == 1 + FLUSH_EVERY
