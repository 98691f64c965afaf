"""A body's CRC32 computed before the append (tail-to-bucket makes it in its read-ahead thread)
is what goes on the wire, and the real server holds the sender to it."""

from __future__ import annotations

import base64
import gzip
import os
import zlib

import httpx
import pytest

from agent.tail_shipping import make_body
from agent.tail_source import read_at
from sink.append import ObjectWriter
from sink.client import S3Client
from sink.compress import GzipMembers, Identity
from sink.crc import crc32
from sink.errors import RemoteError
from sink.protocol import append_request
from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, SECRET_KEY


def crc32_header(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


@pytest.mark.parametrize("size", [0, 1, 5_000, 1 << 20])
def test_crc32_is_zlibs_crc32(size: int) -> None:
    data = os.urandom(size)
    assert crc32(data) == zlib.crc32(data)
    assert crc32(data, 0x1234_5678) == zlib.crc32(data, 0x1234_5678)  # extends a running value as zlib does


def test_a_given_crc32_is_sent_instead_of_computing_one() -> None:
    body = b"some log lines\n"
    assert append_request("http://h/b/k", 0, body).headers["x-amz-checksum-crc32"] == crc32_header(zlib.crc32(body))
    given = append_request("http://h/b/k", 0, body, crc32=7).headers
    assert given["x-amz-checksum-crc32"] == crc32_header(7)
    assert "x-amz-checksum-crc32" not in append_request("http://h/b/k", 0, body, "md5", crc32=7).headers


def test_make_body_reads_encodes_and_checksums(tmp_path) -> None:
    path = tmp_path / "source"
    data = os.urandom(100_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        body = make_body(Identity(), fd, 1_000, 50_000)
        assert (body.data, body.crc32, body.source_bytes) == (data[1_000:51_000], zlib.crc32(data[1_000:51_000]), 50_000)
        packed = make_body(GzipMembers(), fd, 0, 100_000)
        assert gzip.decompress(packed.data) == data and packed.source_bytes == 100_000
        assert packed.crc32 == zlib.crc32(packed.data)  # the CRC32 of the bytes sent, not of SOURCE's
        short = make_body(Identity(), fd, 90_000, 50_000)  # SOURCE ends first
        assert short.source_bytes == 10_000 and short.data == data[90_000:]
        assert read_at(fd, 100_000, 10) == b""
    finally:
        os.close(fd)


async def test_a_precomputed_crc32_needs_the_identity_codec(server) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        client = S3Client(http, server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION))
        writer = ObjectWriter(client, "any", "k", codec=GzipMembers())
        with pytest.raises(ValueError, match="identity codec"):
            await writer.append(b"x", crc32=zlib.crc32(b"x"))
        assert writer.offset is None  # refused before anything was asked of the server


async def test_the_server_holds_the_writer_to_its_precomputed_crc32(server, s3, bucket) -> None:
    body = os.urandom(300_000)
    async with httpx.AsyncClient(timeout=30) as http:
        client = S3Client(http, server.url, auth=SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION))
        writer = ObjectWriter(client, bucket, "app.log")
        assert await writer.append(body, crc32=crc32(body)) == len(body)
        with pytest.raises(RemoteError) as refused:
            await writer.append(b"next\n", crc32=crc32(b"other\n"))
        assert refused.value.code == "BadDigest"
        assert writer.pending is None  # a definite refusal: nothing landed, nothing to reconcile
        assert await writer.append(b"next\n", crc32=crc32(b"next\n")) == len(body) + 5
    assert s3.get_object(Bucket=bucket, Key="app.log")["Body"].read() == body + b"next\n"
