"""Observability: /_tailbucket/metrics scraped and parsed, health and readiness, optional auth.

Scrapes are parsed with prometheus_client's own parser; counters must move by
exactly the requests made between two scrapes.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import ServerMetrics
from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, SECRET_KEY

METRICS = "/_tailbucket/metrics"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(http: httpx.Client) -> Samples:
    answer = http.get(METRICS)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return parse(answer.text)


# --- the module on its own -------------------------------------------------------------


class CountingStats:
    """A stats source that counts how often it is asked (storage.stats in the server)."""

    def __init__(self) -> None:
        self.calls = 0
        self.answer = (3, 300)

    async def __call__(self) -> tuple[int, int]:
        self.calls += 1
        return self.answer


async def test_storage_gauges_are_cached_for_the_configured_time() -> None:
    now = [100.0]
    metrics = ServerMetrics(stats_cache_seconds=5.0, clock=lambda: now[0])
    stats = CountingStats()
    first = parse((await metrics.render(stats)).decode())
    assert (value(first, "tailbucket_stored_objects"), value(first, "tailbucket_stored_bytes")) == (3, 300)
    stats.answer = (4, 400)
    now[0] += 4.9
    assert value(parse((await metrics.render(stats)).decode()), "tailbucket_stored_objects") == 3
    now[0] += 0.1
    assert value(parse((await metrics.render(stats)).decode()), "tailbucket_stored_objects") == 4
    assert stats.calls == 2


async def test_each_server_has_its_own_registry() -> None:
    one, two = ServerMetrics(), ServerMetrics()
    one.observe("GetObject", 200, bytes_in=0, bytes_out=10, seconds=0.01, appending=False)
    one.observe("PutObject", 200, bytes_in=5, bytes_out=0, seconds=0.002, appending=True)
    one.observe("PutObject", 400, bytes_in=5, bytes_out=100, seconds=0.001, appending=True)
    first, second = parse((await one.render(CountingStats())).decode()), parse((await two.render(CountingStats())).decode())
    assert value(first, "tailbucket_requests_total", operation="GetObject", status="200") == 1
    assert value(first, "tailbucket_append_duration_seconds_count") == 1  # refused appends are not acknowledged ones
    assert value(first, "tailbucket_append_duration_seconds_bucket", le="0.0025") == 1
    assert value(first, "tailbucket_append_duration_seconds_bucket", le="0.001") == 0
    assert value(second, "tailbucket_requests_total", operation="GetObject", status="200") == 0


# --- against the real server ---------------------------------------------------------------


def start(make_server, tmp_path, config: str):
    path = tmp_path / "server.yaml"
    path.write_text(config)
    return make_server("--config", str(path))


def test_counters_move_by_exactly_the_requests_made(make_server, tmp_path) -> None:
    server = start(
        make_server, tmp_path,
        "observability: {stats_cache_seconds: 0}\n"
        "keys: [{access_key: reader, secret_key: reader-secret, grants: [{role: read}]}]\n",
    )  # fmt: skip
    with (
        httpx.Client(base_url=server.url, timeout=30) as anonymous,
        httpx.Client(base_url=server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION), timeout=30) as root,
        httpx.Client(base_url=server.url, auth=SigV4Auth("reader", "reader-secret", REGION), timeout=30) as reader,
    ):
        before = scrape(anonymous)
        assert root.put("/logs").status_code == 200
        assert root.put("/logs/app.log", content=b"0123456789").status_code == 200
        assert root.put("/logs/app.log", content=b"abcde", headers={"x-amz-write-offset-bytes": "10"}).status_code == 200
        late = root.put("/logs/app.log", content=b"late", headers={"x-amz-write-offset-bytes": "3"})
        assert late.status_code == 400
        assert root.get("/logs/app.log").content == b"0123456789abcde"
        assert root.head("/logs/app.log").headers["content-length"] == "15"
        refused = reader.put("/logs/app.log", content=b"erase")
        assert refused.status_code == 403
        after = scrape(anonymous)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "tailbucket_requests_total"
    assert moved(requests, operation="CreateBucket", status="200") == 1
    assert moved(requests, operation="PutObject", status="200") == 2
    assert moved(requests, operation="PutObject", status="400") == 1
    assert moved(requests, operation="PutObject", status="403") == 1
    assert moved(requests, operation="GetObject", status="200") == 1
    assert moved(requests, operation="HeadObject", status="200") == 1
    assert moved(requests, operation="Internal", status="200") == 1  # the first scrape
    assert sum(v for (name, _), v in after.items() if name == requests) == 8
    assert moved("tailbucket_received_bytes_total", operation="PutObject") == 10 + 5 + 4 + 5
    assert moved("tailbucket_sent_bytes_total", operation="GetObject") == 15
    assert moved("tailbucket_sent_bytes_total", operation="HeadObject") == 0
    assert moved("tailbucket_sent_bytes_total", operation="PutObject") == len(late.content) + len(refused.content) > 0
    assert moved("tailbucket_append_duration_seconds_count") == 1
    assert 0 < moved("tailbucket_append_duration_seconds_sum") < 10
    assert (value(after, "tailbucket_stored_objects"), value(after, "tailbucket_stored_bytes")) == (1, 15)
    assert moved("tailbucket_committed_writes_total") == 3  # the bucket, the PUT, the append
    assert 1 <= moved("tailbucket_commit_batches_total") <= 3


def test_health_and_ready_need_no_auth(make_server, tmp_path) -> None:
    server = start(make_server, tmp_path, "observability: {require_auth: true}\n")
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        assert anonymous.get("/_tailbucket/health").status_code == 200
        ready = anonymous.get("/_tailbucket/ready")
        assert (ready.status_code, ready.text) == (200, "ready\n")


def test_metrics_need_admin_or_a_metrics_grant_when_auth_is_required(make_server, tmp_path) -> None:
    server = start(
        make_server, tmp_path,
        "observability: {require_auth: true}\n"
        "keys:\n"
        "  - {access_key: reader, secret_key: s1, grants: [{role: read}]}\n"
        "  - {access_key: monitor, secret_key: s2, grants: [{role: metrics}]}\n"
        "  - {access_key: bucket-admin, secret_key: s3, grants: [{role: admin, bucket: logs}]}\n",
    )  # fmt: skip
    keys = {"monitor": ("monitor", "s2"), "root": (ACCESS_KEY, SECRET_KEY),
            "reader": ("reader", "s1"), "bucket-admin": ("bucket-admin", "s3"), "anonymous": None}  # fmt: skip
    statuses = {}
    for who, key in keys.items():
        with httpx.Client(base_url=server.url, auth=key and SigV4Auth(*key, REGION), timeout=30) as http:
            answer = http.get(METRICS)
        statuses[who] = answer.status_code
        assert ("tailbucket_requests_total" in answer.text) == (answer.status_code == 200)
    assert statuses == {"monitor": 200, "root": 200, "reader": 403, "bucket-admin": 403, "anonymous": 403}
