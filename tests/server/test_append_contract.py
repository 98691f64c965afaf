"""Every row of ../shared/APPEND.md, against the real server with real clients."""

from __future__ import annotations

import base64
import hashlib
import xml.etree.ElementTree as ET

import pytest

OFFSET = "x-amz-write-offset-bytes"


def s3_error(response) -> tuple[str, str]:
    root = ET.fromstring(response.content)
    return root.findtext("Code"), root.findtext("Message")


def append(http, bucket, key, body: bytes, offset, **headers):
    hdrs = {OFFSET: str(offset)} if offset is not None else {}
    hdrs.update(headers)
    return http.put(f"/{bucket}/{key}", content=body, headers=hdrs)


def state(http, bucket, key):
    """(bytes, etag) of the object, or None when it is missing."""
    r = http.get(f"/{bucket}/{key}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    return r.content, r.headers["etag"]


@pytest.mark.parametrize("offset", [None, 0])
def test_missing_object_is_created(http, bucket, offset):
    r = append(http, bucket, "log", b"first\n", offset)
    assert r.status_code == 200, r.text
    assert r.headers["x-amz-object-size"] == "6"
    assert state(http, bucket, "log") == (b"first\n", r.headers["etag"])


def test_append_at_length_extends_and_reports_size_and_new_etag(http, bucket):
    first = append(http, bucket, "log", b"one\n", 0)
    second = append(http, bucket, "log", b"two\n", 4)
    assert second.status_code == 200, second.text
    assert second.headers["x-amz-object-size"] == "8"
    assert second.headers["etag"] != first.headers["etag"]
    head = http.head(f"/{bucket}/log")
    assert head.headers["content-length"] == "8" and head.headers["etag"] == second.headers["etag"]
    assert state(http, bucket, "log") == (b"one\ntwo\n", second.headers["etag"])
    tail = http.get(f"/{bucket}/log", headers={"range": "bytes=4-"})
    assert tail.status_code == 206 and tail.content == b"two\n"
    assert tail.headers["content-range"] == "bytes 4-7/8"


@pytest.mark.parametrize("offset", [3, 5, 100])
def test_wrong_offset_is_refused_and_changes_nothing(http, bucket, offset):
    append(http, bucket, "log", b"four", 0)
    before = state(http, bucket, "log")
    r = append(http, bucket, "log", b"more", offset)
    assert r.status_code == 400
    code, message = s3_error(r)
    assert code == "InvalidArgument"
    assert str(offset) in message and "4" in message
    assert state(http, bucket, "log") == before


def test_missing_object_with_positive_offset_is_no_such_key(http, bucket):
    r = append(http, bucket, "log", b"x", 7)
    assert r.status_code == 404 and s3_error(r)[0] == "NoSuchKey"
    assert state(http, bucket, "log") is None


@pytest.mark.parametrize(
    "raw",
    ["+5", "-1", "1 0", "1_0", "5.0", "0x5", "1e1", "\u0665", "", "9223372036854775808", "99999999999999999999"],
    ids=["plus", "minus", "space-inside", "underscore", "dot", "hex", "exponent", "arabic-digit", "empty",
         "2^63", "20-digits"],
)
def test_offset_header_is_parsed_strictly(http, bucket, raw):
    append(http, bucket, "log", b"12345", 0)
    before = state(http, bucket, "log")
    r = http.put(f"/{bucket}/log", content=b"zzz", headers={OFFSET: raw.encode("utf-8")})
    assert r.status_code == 400, r.text
    assert s3_error(r)[0] == "InvalidArgument"
    assert state(http, bucket, "log") == before


def test_offset_header_not_utf8_is_refused(http, bucket):
    append(http, bucket, "log", b"12345", 0)
    r = http.put(f"/{bucket}/log", content=b"zzz", headers={OFFSET: b"5\xff"})
    assert r.status_code == 400 and s3_error(r)[0] == "InvalidArgument"
    assert state(http, bucket, "log")[0] == b"12345"


def test_largest_offset_is_parsed_and_mismatches(http, bucket):
    append(http, bucket, "log", b"12345", 0)
    r = append(http, bucket, "log", b"z", 2**63 - 1)
    assert r.status_code == 400 and str(2**63 - 1) in s3_error(r)[1]


@pytest.mark.parametrize(
    "headers",
    [
        {"x-amz-server-side-encryption": "AES256"},
        {
            "x-amz-server-side-encryption-customer-algorithm": "AES256",
            "x-amz-server-side-encryption-customer-key": base64.b64encode(b"k" * 32).decode(),
            "x-amz-server-side-encryption-customer-key-md5": base64.b64encode(hashlib.md5(b"k" * 32).digest()).decode(),
        },
    ],
    ids=["sse-s3", "sse-c"],
)
def test_sse_with_offset_is_refused(http, bucket, headers):
    append(http, bucket, "log", b"abc", 0)
    r = append(http, bucket, "log", b"def", 3, **headers)
    assert r.status_code == 400 and s3_error(r)[0] == "InvalidArgument"
    assert state(http, bucket, "log")[0] == b"abc"


def test_object_stored_with_sse_cannot_be_appended(http, bucket):
    put = append(http, bucket, "log", b"abc", None, **{"x-amz-server-side-encryption": "AES256"})
    assert put.status_code == 200 and put.headers["x-amz-server-side-encryption"] == "AES256"
    r = append(http, bucket, "log", b"def", 3)
    assert r.status_code == 400 and s3_error(r)[0] == "InvalidArgument"
    assert state(http, bucket, "log")[0] == b"abc"


def test_compressed_object_cannot_be_appended(http, bucket):
    append(http, bucket, "log", b"abc", None, **{"x-rustfs-meta-x-rustfs-internal-compression": "zstd"})
    r = append(http, bucket, "log", b"def", 3)
    assert r.status_code == 400
    code, message = s3_error(r)
    assert code == "InvalidArgument" and "rewrite the object" in message
    assert state(http, bucket, "log")[0] == b"abc"


def test_metadata_is_set_by_the_first_write_only(http, bucket):
    created = append(http, bucket, "log", b"abc", 0, **{"x-amz-meta-host": "web1"})
    assert created.status_code == 200
    r = append(http, bucket, "log", b"def", 3, **{"x-amz-meta-host": "web2"})
    assert r.status_code == 400 and s3_error(r)[0] == "InvalidRequest"
    head = http.head(f"/{bucket}/log")
    assert head.headers["x-amz-meta-host"] == "web1" and head.headers["content-length"] == "3"


def test_empty_body_at_the_right_offset_is_a_no_op(http, bucket):
    first = append(http, bucket, "log", b"abc", 0)
    r = append(http, bucket, "log", b"", 3)
    assert r.status_code == 200 and r.headers["etag"] == first.headers["etag"]
    assert state(http, bucket, "log") == (b"abc", first.headers["etag"])


def test_body_over_5_gib_is_refused_before_it_is_read(server, bucket):
    import socket

    from sink import sigv4
    from tests.support import ACCESS_KEY, REGION, SECRET_KEY

    amz_date = sigv4.amz_date_of(__import__("time").time())
    host = f"127.0.0.1:{server.port}"
    headers = [("host", host), ("x-amz-date", amz_date), ("x-amz-content-sha256", sigv4.UNSIGNED_PAYLOAD),
               ("content-length", str(5 * 2**30 + 1)), ("expect", "100-continue")]
    authz = sigv4.authorization_header(
        "PUT", f"/{bucket}/huge", "", headers, [n for n, _ in headers if n != "expect"], sigv4.UNSIGNED_PAYLOAD,
        amz_date=amz_date, access_key_id=ACCESS_KEY, secret=SECRET_KEY, region=REGION,
    )
    head = f"PUT /{bucket}/huge HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers)
    head += f"authorization: {authz}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        reply = b""
        while b"</Error>" not in reply:
            data = sock.recv(65536)
            assert data, reply
            reply += data
    assert reply.startswith(b"HTTP/1.1 400") and b"<Code>EntityTooLarge</Code>" in reply
    assert b"100 Continue" not in reply


def test_content_md5_mismatch_is_bad_digest(http, bucket):
    append(http, bucket, "log", b"abc", 0)
    wrong = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    r = append(http, bucket, "log", b"def", 3, **{"content-md5": wrong})
    assert r.status_code == 400 and s3_error(r)[0] == "BadDigest"
    assert state(http, bucket, "log")[0] == b"abc"
    right = base64.b64encode(hashlib.md5(b"def").digest()).decode()
    assert append(http, bucket, "log", b"def", 3, **{"content-md5": right}).status_code == 200


def test_checksum_mismatch_is_refused(http, bucket):
    append(http, bucket, "log", b"abc", 0)
    r = append(http, bucket, "log", b"def", 3, **{"x-amz-checksum-crc32": "AAAAAA=="})
    assert r.status_code == 400 and s3_error(r)[0] == "BadDigest"
    bad = append(http, bucket, "log", b"def", 3, **{"x-amz-checksum-crc32": "not base64!"})
    assert bad.status_code == 400 and s3_error(bad)[0] == "InvalidRequest"
    assert state(http, bucket, "log")[0] == b"abc"


def test_append_count_limit(make_server, tmp_path):
    import httpx

    from sink.sigv4 import SigV4Auth
    from tests.support import ACCESS_KEY, REGION, SECRET_KEY

    config = tmp_path / "server.yaml"
    config.write_text("max_appends: 3\n")
    srv = make_server("--config", str(config))
    with httpx.Client(base_url=srv.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION)) as client:
        assert client.put("/limited").status_code == 200
        for i in range(3):
            assert append(client, "limited", "log", b"x", i).status_code == 200
        r = append(client, "limited", "log", b"x", 3)
        assert r.status_code == 400 and s3_error(r)[0] == "TooManyParts"
        assert state(client, "limited", "log")[0] == b"xxx"


def test_plain_put_replaces_and_delete_restarts_at_zero(http, bucket):
    append(http, bucket, "log", b"abc", 0)
    append(http, bucket, "log", b"def", 3)
    assert append(http, bucket, "log", b"new", None).status_code == 200
    assert state(http, bucket, "log")[0] == b"new"
    assert http.delete(f"/{bucket}/log").status_code == 204
    assert state(http, bucket, "log") is None
    assert append(http, bucket, "log", b"x", 3).status_code == 404
    assert append(http, bucket, "log", b"again", 0).status_code == 200
    assert state(http, bucket, "log")[0] == b"again"


async def test_concurrent_appenders_at_one_offset_have_one_winner(server, bucket):
    import httpx
    import trio

    from sink.sigv4 import SigV4Auth
    from tests.support import ACCESS_KEY, REGION, SECRET_KEY

    results: dict[int, int] = {}
    bodies = {i: bytes([65 + i]) * (1000 + i) for i in range(16)}
    async with httpx.AsyncClient(base_url=server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION),
                                 limits=httpx.Limits(max_connections=16)) as client:
        for round_offset_key in ("fresh", "grown"):
            results.clear()
            if round_offset_key == "grown":
                await client.put(f"/{bucket}/grown", content=b"base")
            offset = 0 if round_offset_key == "fresh" else 4

            async def one(i: int) -> None:
                r = await client.put(f"/{bucket}/{round_offset_key}", content=bodies[i], headers={OFFSET: str(offset)})
                results[i] = r.status_code

            async with trio.open_nursery() as nursery:
                for i in bodies:
                    nursery.start_soon(one, i)
            winners = [i for i, status in results.items() if status == 200]
            assert len(winners) == 1, results
            assert sorted(set(results.values())) == [200, 400]
            got = (await client.get(f"/{bucket}/{round_offset_key}")).content
            prefix = b"" if round_offset_key == "fresh" else b"base"
            assert got == prefix + bodies[winners[0]]
