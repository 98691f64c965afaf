"""Presigned URLs (SigV4 query auth) end to end: boto3 makes them, a plain HTTP client uses them.

GET, HEAD and PUT (appends included: ``x-amz-write-offset-bytes`` is a signed
header the URL's user must send), the 7-day limit, expiry (a URL signed in the
past with ``sink.presign.presign_url(now=...)``, no waiting) and the key's grants.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import boto3
import httpx
import pytest
from botocore.config import Config

from sink.presign import presign_url
from tests.support import ACCESS_KEY, REGION, SECRET_KEY, ServerProcess

CONFIG = """\
keys:
  - {access_key: reader, secret_key: reader-secret, grants: [{role: read, bucket: shared}]}
  - {access_key: agent, secret_key: agent-secret, grants: [{role: append, bucket: shared, prefix: agent/}]}
"""
BUCKET = "shared"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("presigned")
    (tmp / "server.yaml").write_text(CONFIG)
    proc = ServerProcess(tmp / "data", ["--config", str(tmp / "server.yaml")]).start()
    yield proc
    proc.stop()


def s3_client(server: ServerProcess, access_key: str = ACCESS_KEY, secret: str = SECRET_KEY):
    return boto3.client(
        "s3", endpoint_url=server.url, aws_access_key_id=access_key, aws_secret_access_key=secret,
        region_name=REGION, config=Config(signature_version="s3v4", retries={"max_attempts": 1}),
    )  # fmt: skip


@pytest.fixture(scope="module")
def root(server):
    client = s3_client(server)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def http():
    with httpx.Client(timeout=30) as client:
        yield client


def error_of(response: httpx.Response) -> tuple[str, str]:
    root = ET.fromstring(response.content)
    return root.findtext("Code") or "", root.findtext("Message") or ""


def body_of(root, key: str) -> bytes:
    return root.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def test_get_and_head(root, http) -> None:
    root.put_object(Bucket=BUCKET, Key="dir/a file.log", Body=b"hello\n")
    get = root.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "dir/a file.log"}, ExpiresIn=60)
    head = root.generate_presigned_url("head_object", Params={"Bucket": BUCKET, "Key": "dir/a file.log"}, ExpiresIn=60)
    answer = http.get(get)
    assert (answer.status_code, answer.content) == (200, b"hello\n")
    answer = http.head(head)
    assert (answer.status_code, answer.headers["content-length"]) == (200, "6")
    assert http.get(head).status_code == 403  # signed for HEAD, not GET


def test_put_then_append_at_the_signed_offset(root, http) -> None:
    put = root.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "app.log"}, ExpiresIn=60)
    assert http.put(put, content=b"line 1\n").status_code == 200
    append = root.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": "app.log", "WriteOffsetBytes": 7}, ExpiresIn=60
    )
    answer = http.put(append, content=b"line 2\n", headers={"x-amz-write-offset-bytes": "7"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-amz-object-size"] == "14"
    assert body_of(root, "app.log") == b"line 1\nline 2\n"


def test_append_url_at_a_stale_offset_changes_nothing(root, http) -> None:
    root.put_object(Bucket=BUCKET, Key="stale.log", Body=b"0123456789")
    append = root.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": "stale.log", "WriteOffsetBytes": 3}, ExpiresIn=60
    )
    answer = http.put(append, content=b"xyz", headers={"x-amz-write-offset-bytes": "3"})
    assert answer.status_code == 400 and error_of(answer)[0] == "InvalidArgument"
    assert body_of(root, "stale.log") == b"0123456789"


@pytest.mark.parametrize("sent", [None, "11"], ids=["header-dropped", "header-changed"])
def test_an_append_url_cannot_become_an_overwrite(root, http, sent) -> None:
    """The offset is signed: dropping it (a plain PUT would replace the object) or changing it breaks the signature."""
    root.put_object(Bucket=BUCKET, Key=f"signed-{sent}.log", Body=b"0123456789")
    append = root.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": f"signed-{sent}.log", "WriteOffsetBytes": 10}, ExpiresIn=60
    )
    headers = {} if sent is None else {"x-amz-write-offset-bytes": sent}
    answer = http.put(append, content=b"!", headers=headers)
    assert answer.status_code == 403 and error_of(answer)[0] == "SignatureDoesNotMatch"
    assert body_of(root, f"signed-{sent}.log") == b"0123456789"


def test_a_url_for_one_key_does_not_open_another(root, http) -> None:
    root.put_object(Bucket=BUCKET, Key="one.log", Body=b"1")
    root.put_object(Bucket=BUCKET, Key="two.log", Body=b"2")
    url = root.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "one.log"}, ExpiresIn=60)
    answer = http.get(url.replace("/one.log?", "/two.log?"))
    assert answer.status_code == 403 and error_of(answer)[0] == "SignatureDoesNotMatch"


def test_seven_days_is_the_limit(root, http) -> None:
    root.put_object(Bucket=BUCKET, Key="week.log", Body=b"w")
    params = {"Bucket": BUCKET, "Key": "week.log"}
    assert http.get(root.generate_presigned_url("get_object", Params=params, ExpiresIn=7 * 24 * 3600)).content == b"w"
    answer = http.get(root.generate_presigned_url("get_object", Params=params, ExpiresIn=7 * 24 * 3600 + 1))
    assert answer.status_code == 400 and error_of(answer)[0] == "AuthorizationQueryParametersError"


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
def test_expired_url_is_refused_and_changes_nothing(server, root, http, method) -> None:
    root.put_object(Bucket=BUCKET, Key="expired.log", Body=b"kept")
    url = presign_url(
        method, f"{server.url}/{BUCKET}/expired.log", access_key_id=ACCESS_KEY, secret=SECRET_KEY,
        region=REGION, expires=60, now=time.time() - 61 - 5,
    )  # fmt: skip
    answer = http.request(method, url, content=b"replaced" if method == "PUT" else None)
    assert answer.status_code == 403
    if method != "HEAD":
        assert error_of(answer) == ("AccessDenied", "Request has expired")
    assert body_of(root, "expired.log") == b"kept"


def test_a_url_signed_in_the_past_works_until_it_expires(server, root, http) -> None:
    root.put_object(Bucket=BUCKET, Key="recent.log", Body=b"r")
    url = presign_url(
        "GET", f"{server.url}/{BUCKET}/recent.log", access_key_id=ACCESS_KEY, secret=SECRET_KEY,
        region=REGION, expires=3600, now=time.time() - 600,
    )  # fmt: skip
    assert http.get(url).content == b"r"


def test_a_url_carries_its_signers_grants(server, root, http) -> None:
    root.put_object(Bucket=BUCKET, Key="agent/app.log", Body=b"shipped\n")
    reader = s3_client(server, "reader", "reader-secret")
    agent = s3_client(server, "agent", "agent-secret")
    assert http.get(reader.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "agent/app.log"})).content == b"shipped\n"
    put = reader.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "agent/app.log"})
    answer = http.put(put, content=b"erased")
    assert answer.status_code == 403 and error_of(answer)[0] == "AccessDenied"

    overwrite = agent.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "agent/app.log"})
    assert http.put(overwrite, content=b"erased").status_code == 403
    append = agent.generate_presigned_url(
        "put_object", Params={"Bucket": BUCKET, "Key": "agent/app.log", "WriteOffsetBytes": 8}
    )
    assert http.put(append, content=b"more\n", headers={"x-amz-write-offset-bytes": "8"}).status_code == 200
    elsewhere = agent.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": "other/new.log"})
    assert http.put(elsewhere, content=b"x").status_code == 403
    assert body_of(root, "agent/app.log") == b"shipped\nmore\n"
    assert "Contents" not in root.list_objects_v2(Bucket=BUCKET, Prefix="other/")
