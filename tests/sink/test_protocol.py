"""The pure protocol: URLs, append headers, S3 XML errors, classification."""

from __future__ import annotations

import base64
import hashlib
import zlib
from urllib.parse import unquote

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sink import protocol
from sink.errors import ConfigError
from sink.protocol import Endpoint, Outcome

LOCAL = Endpoint.parse("http://127.0.0.1:9000")
AWS = protocol.aws_endpoint("eu-west-1")


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("plain.log", "/logs/plain.log"),
        ("with space.log", "/logs/with%20space.log"),
        ("a+b=c&d", "/logs/a%2Bb%3Dc%26d"),
        ("host/var//log/app.log", "/logs/host/var//log/app.log"),
        ("ünïcode/日志.log", "/logs/%C3%BCn%C3%AFcode/%E6%97%A5%E5%BF%97.log"),
        ("tilde~_-.ok", "/logs/tilde~_-.ok"),
        ("a/../b/./c", "/logs/a/%2E%2E/b/%2E/c"),
        ("/leading", "/logs//leading"),
    ],
)
def test_path_style_key_encoding(key: str, path: str) -> None:
    url = protocol.object_url(LOCAL, "logs", key, "path")
    assert url == f"http://127.0.0.1:9000{path}"
    assert httpx.URL(url).raw_path.decode() == path  # httpx sends it unchanged


@given(st.text(min_size=1, max_size=40).filter(lambda k: "\x00" not in k))
def test_any_key_survives_httpx_and_decodes_back(key: str) -> None:
    raw = httpx.URL(protocol.object_url(LOCAL, "logs", key, "path")).raw_path.decode("ascii")
    assert raw.startswith("/logs/")
    assert unquote(raw[len("/logs/") :], errors="strict") == key


def test_virtual_host_style() -> None:
    assert protocol.object_url(AWS, "my-logs", "a b/c", "auto") == "https://my-logs.s3.eu-west-1.amazonaws.com/a%20b/c"
    assert protocol.bucket_url(AWS, "my-logs", "virtual", "session") == "https://my-logs.s3.eu-west-1.amazonaws.com/?session"


@pytest.mark.parametrize(
    ("endpoint", "bucket", "virtual"),
    [
        (AWS, "my-logs", True),
        (AWS, "dotted.bucket", False),  # TLS wildcard certificates cannot cover dots
        (AWS, "Upper", False),
        (LOCAL, "my-logs", False),  # an IP cannot carry a bucket label
        (Endpoint.parse("http://minio.internal:9000"), "my-logs", False),  # custom endpoints: path style
    ],
)
def test_auto_addressing(endpoint: Endpoint, bucket: str, virtual: bool) -> None:
    assert protocol.use_virtual_host(endpoint, bucket, "auto") is virtual


def test_forced_virtual_host_refuses_impossible_bucket_names() -> None:
    with pytest.raises(ConfigError):
        protocol.object_url(AWS, "Not_A_Host", "k", "virtual")


def test_endpoint_with_path_prefix_and_bad_endpoints() -> None:
    ep = Endpoint.parse("http://gateway:8080/s3/")
    assert protocol.object_url(ep, "b", "k", "path") == "http://gateway:8080/s3/b/k"
    for bad in ("127.0.0.1:9000", "ftp://host", "http://host?x=1", "http://"):
        with pytest.raises(ConfigError):
            Endpoint.parse(bad)


def test_s3express_zonal_endpoint() -> None:
    ep = protocol.s3express_endpoint("logs--usw2-az1--x-s3", "us-west-2")
    assert str(ep) == "https://s3express-usw2-az1.us-west-2.amazonaws.com"
    with pytest.raises(ConfigError):
        protocol.s3express_endpoint("ordinary-bucket", "us-west-2")


def test_append_request_headers() -> None:
    body = b"hello\n"
    req = protocol.append_request("http://h/b/k", 1024, body)
    assert (req.method, req.body) == ("PUT", body)
    assert req.headers["x-amz-write-offset-bytes"] == "1024"
    assert req.headers["Content-Length"] == "6"
    assert base64.b64decode(req.headers["x-amz-checksum-crc32"]) == zlib.crc32(body).to_bytes(4, "big")
    assert "Transfer-Encoding" not in req.headers
    md5 = protocol.append_request("http://h/b/k", 0, body, "md5")
    assert base64.b64decode(md5.headers["Content-MD5"]) == hashlib.md5(body).digest()
    assert "x-amz-checksum-crc32" not in md5.headers
    assert set(protocol.append_request("http://h/b/k", 0, body, "none").headers) == {"x-amz-write-offset-bytes", "Content-Length"}
    with pytest.raises(ValueError):
        protocol.append_request("http://h/b/k", -1, body)


def test_get_and_create_bucket_requests() -> None:
    assert protocol.get_request("u", (10, None)).headers == {"Range": "bytes=10-"}
    assert protocol.get_request("u", (10, 19)).headers == {"Range": "bytes=10-19"}
    assert protocol.create_bucket_request("u", "us-east-1").body == b""
    assert b"<LocationConstraint>eu-west-1</LocationConstraint>" in protocol.create_bucket_request("u", "eu-west-1").body


def test_parse_error_body_with_namespace() -> None:
    body = (
        b'<?xml version="1.0"?><Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Code>InvalidArgument</Code>'
        b"<Message>offset 5 does not match size 3</Message><RequestId>RID1</RequestId></Error>"
    )
    info = protocol.parse_error(400, body, {})
    assert info == protocol.ErrorInfo(400, "InvalidArgument", "offset 5 does not match size 3", "RID1")


def test_parse_error_without_a_body_uses_status_and_header() -> None:
    info = protocol.parse_error(403, b"", {"x-amz-request-id": "RID2"})
    assert (info.code, info.request_id) == ("Forbidden", "RID2")
    assert protocol.classify(info.status, info.code) is Outcome.AUTH
    assert protocol.parse_error(502, b"<html>bad gateway", {}).code == "HTTP502"


@pytest.mark.parametrize(
    ("status", "code", "appending", "outcome"),
    [
        (200, None, True, Outcome.OK),
        (400, "InvalidArgument", True, Outcome.OFFSET_MISMATCH),
        (400, "InvalidArgument", False, Outcome.FATAL),
        (400, "InvalidWriteOffset", True, Outcome.OFFSET_MISMATCH),
        (400, "TooManyParts", True, Outcome.TOO_MANY_PARTS),
        (404, "NoSuchKey", True, Outcome.NOT_FOUND),
        (404, "NotFound", False, Outcome.NOT_FOUND),
        (403, "SignatureDoesNotMatch", False, Outcome.AUTH),
        (403, "InvalidAccessKeyId", False, Outcome.AUTH),
        (403, "AccessDenied", False, Outcome.AUTH),
        (400, "ExpiredToken", False, Outcome.AUTH),
        (503, "SlowDown", True, Outcome.THROTTLED),
        (503, "HTTP503", True, Outcome.THROTTLED),
        (500, "InternalError", True, Outcome.SERVER),
        (400, "RequestTimeout", True, Outcome.SERVER),
        (400, "BadDigest", True, Outcome.FATAL),
        (400, "EntityTooLarge", True, Outcome.FATAL),
    ],
)
def test_classify(status: int, code: str | None, appending: bool, outcome: Outcome) -> None:
    assert protocol.classify(status, code, appending=appending) is outcome


def test_header_int_is_strict() -> None:
    headers = {"a": "12", "b": " 12", "c": "+1", "d": "١٢", "e": ""}
    assert [protocol.header_int(headers, k) for k in "abcdef"] == [12, None, None, None, None, None]
