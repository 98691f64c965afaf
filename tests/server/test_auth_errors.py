"""The server refuses what is not properly signed, with S3's codes, and changes nothing."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET

import httpx
import pytest

from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, SECRET_KEY


def error(response) -> dict[str, str]:
    root = ET.fromstring(response.content)
    return {child.tag: child.text or "" for child in root}


@pytest.mark.parametrize(
    "auth, code",
    [
        (None, "AccessDenied"),
        (SigV4Auth(ACCESS_KEY, "wrong-secret", REGION), "SignatureDoesNotMatch"),
        (SigV4Auth("NOSUCHKEY", SECRET_KEY, REGION), "InvalidAccessKeyId"),
        (SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, clock=lambda: time.time() - 16 * 60), "RequestTimeTooSkewed"),
        (SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, clock=lambda: time.time() + 16 * 60), "RequestTimeTooSkewed"),
    ],
    ids=["anonymous", "wrong-secret", "unknown-key", "15-min-late", "15-min-early"],
)
def test_bad_auth_is_refused_and_writes_nothing(server, http, bucket, auth, code):
    http.put(f"/{bucket}/log", content=b"abc")
    with httpx.Client(base_url=server.url, auth=auth) as client:
        r = client.put(f"/{bucket}/log", content=b"def", headers={"x-amz-write-offset-bytes": "3"})
    assert r.status_code == 403
    body = error(r)
    assert body["Code"] == code
    assert body["RequestId"] == r.headers["x-amz-request-id"] and body["Resource"] == f"/{bucket}/log"
    assert http.get(f"/{bucket}/log").content == b"abc"


@pytest.mark.parametrize("size", [6, 100_000, 3 * 1024 * 1024], ids=["inline", "worker-thread", "spilled"])
def test_tampered_body_is_refused(server, http, bucket, size):
    """The signed SHA-256 is checked however the body is hashed: on the event loop
    (small), in a worker thread (over 64 KiB), or piece by piece past 1 MiB."""
    honest = b"h" * size
    auth = SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION)
    request = httpx.Request("PUT", f"{server.url}/{bucket}/log", content=honest)
    auth.sign(request)  # x-amz-content-sha256 signed for the honest body
    with httpx.Client() as client:
        forged = honest[:-1] + b"f"
        r = client.send(httpx.Request("PUT", request.url, headers=request.headers, content=forged))
        assert r.status_code == 400 and error(r)["Code"] == "XAmzContentSHA256Mismatch"
        assert http.get(f"/{bucket}/log").status_code == 404
        assert client.send(request).status_code == 200
    assert http.get(f"/{bucket}/log").content == honest


def test_every_response_has_a_request_id(http, bucket):
    for r in (http.get("/"), http.get(f"/{bucket}/missing"), http.head(f"/{bucket}/missing")):
        assert len(r.headers["x-amz-request-id"]) >= 16
    missing = http.get(f"/{bucket}/missing")
    assert missing.status_code == 404 and error(missing)["Code"] == "NoSuchKey"


def test_health_needs_no_auth(server):
    assert httpx.get(f"{server.url}/_tailbucket/health").status_code == 200
