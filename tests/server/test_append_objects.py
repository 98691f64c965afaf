"""AppendObjects (``POST /bucket?appends``) against the real server: each item as its PutObject.

Every item's outcome is compared with what a PutObject with
``x-amz-write-offset-bytes`` of the same bytes does to another key (or the
same one): status and code, size, ETag, CRC32.  Every refusal of a whole
request is checked to change nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor

import h11
import httpx
import pytest
import trio
from trio.testing import wait_all_tasks_blocked

from server.batch_append import MAX_BODY, HeldBytes
from sink import sigv4
from sink.append_batch import CONTENT_TYPE, MAX_ITEMS, BatchItem, decode_results, encode_request
from sink.sigv4 import SigV4Auth
from tests.server.test_metrics import scrape, value
from tests.support import ACCESS_KEY, REGION, SECRET_KEY, ServerProcess

OFFSET = "x-amz-write-offset-bytes"
HEADERS = {"content-type": CONTENT_TYPE}


def crc32_of(body: bytes) -> str:
    from sink.crc import crc32

    return base64.b64encode(crc32(body).to_bytes(4, "big")).decode()


def post(http: httpx.Client, bucket: str, items: list[BatchItem], **headers: str) -> httpx.Response:
    return http.post(f"/{bucket}?appends", content=encode_request(items), headers={**HEADERS, **headers})


def batch(http: httpx.Client, bucket: str, items: list[BatchItem]):
    r = post(http, bucket, items)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return decode_results(r.content, len(items))


def put(http: httpx.Client, bucket: str, key: str, body: bytes, offset: int, **headers: str) -> httpx.Response:
    return http.put(f"/{bucket}/{key}", content=body, headers={OFFSET: str(offset), **headers})


def s3_error(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, ET.fromstring(response.content).findtext("Code")


def state(http: httpx.Client, bucket: str, key: str) -> tuple[bytes, str, str] | None:
    """(bytes, ETag, CRC32) of the object, None when missing."""
    r = http.get(f"/{bucket}/{key}", headers={"x-amz-checksum-mode": "ENABLED"})
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.content, r.headers["etag"], r.headers["x-amz-checksum-crc32"]


def test_items_land_as_their_puts_would(http, bucket) -> None:
    """New objects at 0 and existing ones at their length; each object ends as the same PUTs leave a twin."""
    for key in ("old", "twin-old"):
        assert put(http, bucket, key, b"first\n", 0).status_code == 200
    appends = [("old", 6, b"second\n", True), ("new", 0, b"hello\n", False), ("empty", 0, b"", False),
               ("bigger", 0, bytes(range(256)) * 400, True)]  # 100 KiB: hashed off the event loop
    results = batch(http, bucket, [BatchItem(k, o, b, crc32_of(b) if crc else None) for k, o, b, crc in appends])
    for (key, offset, body, crc), result in zip(appends, results):
        twin = put(http, bucket, f"twin-{key}", body, offset, **({"x-amz-checksum-crc32": crc32_of(body)} if crc else {}))
        assert twin.status_code == 200, twin.text
        assert (result.status, result.size, result.etag) == (200, int(twin.headers["x-amz-object-size"]), twin.headers["etag"])
        assert state(http, bucket, key) == state(http, bucket, f"twin-{key}")
    assert state(http, bucket, "old")[0] == b"first\nsecond\n"
    # The append count goes on as a PUT's would: the next ETag of each is the same too.
    again = batch(http, bucket, [BatchItem("old", 13, b"third\n")])[0]
    assert again.etag == put(http, bucket, "twin-old", b"third\n", 13).headers["etag"]


def test_a_refused_item_is_what_its_put_answers_and_the_others_land(http, bucket) -> None:
    for key in ("a", "b"):
        assert put(http, bucket, key, b"abc", 0).status_code == 200
    assert http.put(f"/{bucket}/sse", content=b"x", headers={"x-amz-server-side-encryption": "AES256"}).status_code == 200
    before = {key: state(http, bucket, key) for key in ("b", "sse")}
    refused = [
        BatchItem("b", 5, b"def"),  # wrong offset
        BatchItem("missing", 4, b"def"),  # offset > 0 on a missing object
        BatchItem("b", 3, b"def", crc32_of(b"other")),  # bad CRC32
        BatchItem("b", 3, b"def", "not base64!"),  # not a CRC32
        BatchItem("sse", 1, b"def"),  # server-side encrypted
    ]
    for n, item in enumerate(refused):
        results = batch(http, bucket, [BatchItem("a", 3 * (n + 1), b"def"), item])
        assert results[0].ok and results[0].size == len(state(http, bucket, "a")[0]) == 3 * (n + 2)
        headers = {"x-amz-checksum-crc32": item.crc32} if item.crc32 else {}
        expected = s3_error(put(http, bucket, item.key, bytes(item.body), item.offset, **headers))
        assert (results[1].status, results[1].code) == expected, item
        assert results[1].size is None and results[1].message
        assert {key: state(http, bucket, key) for key in ("b", "sse")} == before
        assert state(http, bucket, "missing") is None
    assert (s3_error(put(http, bucket, "b", b"def", 5))) == (400, "InvalidArgument")  # the offset refusal here


def test_an_unencodable_key_is_refused_alone(http, bucket) -> None:
    """JSON can carry a lone surrogate no S3 path can: that item is refused, the others land."""
    results = batch(http, bucket, [BatchItem("\ud800", 0, b"x"), BatchItem("fine", 0, b"y")])
    assert (results[0].status, results[0].code) == (400, "InvalidArgument")
    assert results[1].ok and state(http, bucket, "fine")[0] == b"y"


def test_a_key_too_long_is_refused_alone_as_its_put_is(http, bucket) -> None:
    """1,025 bytes of UTF-8 (512 two-byte characters and one more): KeyTooLongError for that item only."""
    long_key = "é" * 512 + "k"
    assert put(http, bucket, "log", b"abc", 0).status_code == 200
    items = [BatchItem("log", 3, b"def"), BatchItem(long_key, 0, b"lost?"), BatchItem("new", 0, b"x")]
    results = batch(http, bucket, items)
    refusal = put(http, bucket, long_key, b"lost?", 0)
    assert (results[1].status, results[1].code) == s3_error(refusal) == (400, "KeyTooLongError")
    assert results[1].message == ET.fromstring(refusal.content).findtext("Message")
    assert results[1].size is None
    assert [(r.status, r.size) for r in (results[0], results[2])] == [(200, 6), (200, 1)]
    assert (state(http, bucket, "log")[0], state(http, bucket, "new")[0]) == (b"abcdef", b"x")
    listed = ET.fromstring(http.get(f"/{bucket}?list-type=2").content)
    assert sorted(k.text for k in listed.iter() if k.tag.endswith("}Key")) == ["log", "new"]


def test_each_item_that_lands_is_one_append_in_the_duration_histogram(http, bucket) -> None:
    assert put(http, bucket, "log", b"abc", 0).status_code == 200
    items = [BatchItem("log", 3, b"def"), BatchItem("log-2", 0, b"x"), BatchItem("late", 5, b"y"),
             BatchItem("k" * 1025, 0, b"z"), BatchItem("log-3", 0, b"")]
    before = scrape(http)
    results = batch(http, bucket, items)
    after = scrape(http)
    assert [r.status for r in results] == [200, 200, 404, 400, 200]  # late: no such object to append to

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("tailbucket_append_duration_seconds_count") == 3
    assert moved("tailbucket_append_duration_seconds_bucket", le="+Inf") == 3
    assert 0 < moved("tailbucket_append_duration_seconds_sum") < 10
    assert moved("tailbucket_requests_total", operation="AppendObjects", status="200") == 1


def test_the_empty_probe_answers_no_results(server, http, bucket) -> None:
    r = http.post(f"/{bucket}?appends", content=b'{"appends":[]}\n', headers=HEADERS)
    assert (r.status_code, r.headers["content-type"], r.json()) == (200, "application/json", {"results": []})
    unsigned = httpx.Client(base_url=server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, unsigned_payload=True))
    with unsigned:
        assert unsigned.post(f"/{bucket}?appends", content=b'{"appends":[]}\n').json() == {"results": []}
    assert s3_error(http.get(f"/{bucket}?appends")) == (405, "MethodNotAllowed")
    metrics = http.get("/_tailbucket/metrics").text
    assert 'tailbucket_requests_total{operation="AppendObjects",status="200"}' in metrics


def test_batches_racing_at_one_offset_land_once(server, bucket, http) -> None:
    assert put(http, bucket, "log", b"base\n", 0).status_code == 200
    bodies = [b"one\n", b"two\n"]

    def send(body: bytes):
        with httpx.Client(base_url=server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION), timeout=30) as c:
            return batch(c, bucket, [BatchItem("log", 5, body), BatchItem(f"own-{body[:3].decode()}", 0, body)])

    for _ in range(3):
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(send, bodies))
        winners = [body for body, results in zip(bodies, outcomes) if results[0].ok]
        assert len(winners) == 1, outcomes
        assert all(results[1].ok for results in outcomes)
        loser = next(results[0] for results in outcomes if not results[0].ok)
        assert (loser.status, loser.code) == (400, "InvalidArgument")
        assert state(http, bucket, "log")[0] == b"base\n" + winners[0]
        http.delete(f"/{bucket}/log")
        put(http, bucket, "log", b"base\n", 0)
        for body in bodies:
            http.delete(f"/{bucket}/own-{body[:3].decode()}")


# -- refusals of the whole request -----------------------------------------------


def _raw_head(server: ServerProcess, bucket: str, headers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """Send a signed POST ?appends head whose body is never sent; the status and body of the answer.
    (httpx would send a body: these refusals must come from the head alone.)"""
    amz_date = sigv4.amz_date_of(time.time())
    headers = [("host", f"127.0.0.1:{server.port}"), ("x-amz-date", amz_date),
               ("x-amz-content-sha256", sigv4.UNSIGNED_PAYLOAD), *headers]
    authz = sigv4.authorization_header(
        "POST", f"/{bucket}", "appends=", headers, [n for n, _ in headers], sigv4.UNSIGNED_PAYLOAD,
        amz_date=amz_date, access_key_id=ACCESS_KEY, secret=SECRET_KEY, region=REGION,
    )  # fmt: skip
    conn = h11.Connection(h11.CLIENT)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(conn.send(h11.Request(method="POST", target=f"/{bucket}?appends",
                                           headers=[*headers, ("authorization", authz)])))  # fmt: skip
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return status, body


def _code(body: bytes) -> str:
    return ET.fromstring(body).findtext("Code")


def test_malformed_requests_are_refused_whole(http, bucket) -> None:
    assert put(http, bucket, "log", b"abc", 0).status_code == 200
    good = encode_request([BatchItem("log", 3, b"def"), BatchItem("new", 0, b"x")])
    head, _, bodies = good.partition(b"\n")
    for body, says in [
        (b"not json\n" + bodies, "not JSON"),
        (head + b"\n" + bodies + b"!", "follow the last"),
        (head + b"\n" + bodies[:-1], "ends before"),
        (good.replace(b'"new"', b'"log"'), "more than once"),
        (json.dumps({"appends": [{"key": f"k{n}", "offset": 0, "length": 0} for n in range(MAX_ITEMS + 1)]}).encode()
         + b"\n", "at most"),
    ]:
        r = http.post(f"/{bucket}?appends", content=body, headers=HEADERS)
        assert s3_error(r) == (400, "InvalidRequest") and says in ET.fromstring(r.content).findtext("Message")
    assert state(http, bucket, "log")[0] == b"abc" and state(http, bucket, "new") is None


def test_requests_refused_before_their_items(server, http, bucket) -> None:
    assert put(http, bucket, "log", b"abc", 0).status_code == 200
    items = [BatchItem("log", 3, b"def"), BatchItem("new", 0, b"x")]
    body = encode_request(items)
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert s3_error(post(http, "no-such-bucket", items)) == (404, "NoSuchBucket")
    assert s3_error(post(http, bucket, items, **{"x-amz-content-sha256": hashlib.sha256(b"x").hexdigest()})) == (
        400, "XAmzContentSHA256Mismatch")  # fmt: skip
    assert s3_error(post(http, bucket, items, **{"content-md5": wrong_md5})) == (400, "BadDigest")
    assert s3_error(post(http, bucket, items, **{"x-amz-checksum-crc32": crc32_of(b"other")})) == (400, "BadDigest")
    with httpx.Client(base_url=server.url, auth=SigV4Auth(ACCESS_KEY, "wrong secret", REGION)) as forger:
        assert s3_error(post(forger, bucket, items)) == (403, "SignatureDoesNotMatch")
    status, answer = _raw_head(server, bucket, [("transfer-encoding", "chunked")])
    assert (status, _code(answer)) == (411, "MissingContentLength")
    status, answer = _raw_head(server, bucket, [("content-length", str(MAX_BODY + 1))])
    assert (status, _code(answer)) == (400, "EntityTooLarge")
    assert state(http, bucket, "log")[0] == b"abc" and state(http, bucket, "new") is None
    right_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()  # the same request, its digest right: lands
    assert [r.ok for r in decode_results(post(http, bucket, items, **{"content-md5": right_md5}).content, 2)] == [True] * 2


# -- grants and limits: a private server with keys and max_appends -----------------

CONFIG = """\
max_appends: 3
keys:
  - {access_key: agent-web1, secret_key: s-agent, grants: [{role: append, bucket: logs, prefix: web1/}]}
  - {access_key: reader, secret_key: s-reader, grants: [{role: read, bucket: logs}]}
"""


@pytest.fixture(scope="module")
def private(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("append-objects")
    (tmp / "server.yaml").write_text(CONFIG)
    proc = ServerProcess(tmp / "data", ["--config", str(tmp / "server.yaml")]).start()
    with httpx.Client(base_url=proc.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION)) as root:
        assert root.put("/logs").status_code == 200
    yield proc
    proc.stop()


def _as(server: ServerProcess, key: str, secret: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, auth=SigV4Auth(key, secret, REGION), timeout=30)


def test_an_item_out_of_the_grants_is_refused_alone(private) -> None:
    with _as(private, "agent-web1", "s-agent") as agent, _as(private, "reader", "s-reader") as reader:
        results = batch(agent, "logs", [BatchItem("web1/a", 0, b"mine"), BatchItem("web2/a", 0, b"theirs")])
        assert results[0].ok and (results[1].status, results[1].code) == (403, "AccessDenied")
        assert s3_error(put(agent, "logs", "web2/a", b"theirs", 0)) == (403, "AccessDenied")  # as its PUT
        assert state(reader, "logs", "web1/a")[0] == b"mine" and state(reader, "logs", "web2/a") is None
        assert s3_error(post(reader, "logs", [BatchItem("web1/a", 4, b"more")])) == (403, "AccessDenied")
        assert state(reader, "logs", "web1/a")[0] == b"mine"


def test_an_object_at_its_append_limit_is_refused_as_its_put_is(private) -> None:
    with _as(private, "agent-web1", "s-agent") as agent:
        for n, offset in enumerate((0, 1, 2)):
            assert batch(agent, "logs", [BatchItem("web1/limit", offset, b"x")])[0].ok, n
        refused = batch(agent, "logs", [BatchItem("web1/limit", 3, b"x"), BatchItem("web1/other", 0, b"y")])
        assert (refused[0].status, refused[0].code) == s3_error(put(agent, "logs", "web1/limit", b"x", 3))
        assert refused[0].code == "TooManyParts" and refused[1].ok


# -- the server-wide budget of bodies held --------------------------------------


async def test_held_bytes_are_taken_in_turn_and_never_exceed_the_budget() -> None:
    held = HeldBytes(10)
    order: list[str] = []
    release = {name: trio.Event() for name in "abcd"}

    async def holder(name: str, size: int) -> None:
        async with held.hold(size):
            order.append(name)
            assert 0 <= held.free <= held.total
            await release[name].wait()

    async with trio.open_nursery() as nursery:
        for name, size in (("a", 6), ("b", 6), ("c", 1)):  # b does not fit beside a; c would, but comes after b
            nursery.start_soon(holder, name, size)
            await wait_all_tasks_blocked()
        assert order == ["a"] and held.free == 4
        release["a"].set()
        await wait_all_tasks_blocked()
        assert order == ["a", "b", "c"] and held.free == 3
        nursery.start_soon(holder, "d", 50)  # more than the budget: waits until it is all free
        await wait_all_tasks_blocked()
        release["b"].set()
        await wait_all_tasks_blocked()
        assert order == ["a", "b", "c"]
        release["c"].set()
        await wait_all_tasks_blocked()
        assert order == ["a", "b", "c", "d"] and held.free == 0
        release["d"].set()
    assert held.free == 10
