"""Real S3 clients against the real server: boto3, the aws CLI, curl --aws-sigv4."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support import ACCESS_KEY, SECRET_KEY

AWS = str(Path(sys.executable).with_name("aws"))


def aws(server, env, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([AWS, "--endpoint-url", server.url, *args], env=env, input=input,
                          capture_output=True, timeout=60)


def test_boto3_appends_with_default_checksums(s3, bucket):
    s3.put_object(Bucket=bucket, Key="app.log", Body=b"line 1\n")
    r = s3.put_object(Bucket=bucket, Key="app.log", Body=b"line 2\n", WriteOffsetBytes=7)
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    got = s3.get_object(Bucket=bucket, Key="app.log", ChecksumMode="ENABLED")
    assert got["Body"].read() == b"line 1\nline 2\n"  # botocore validates the full-object CRC32 here
    assert got["ETag"] == r["ETag"]
    assert s3.head_object(Bucket=bucket, Key="app.log")["ContentLength"] == 14


def test_boto3_wrong_offset_error(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"abc")
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=bucket, Key="k", Body=b"d", WriteOffsetBytes=2)
    assert info.value.response["Error"]["Code"] == "InvalidArgument"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_boto3_large_append_uses_100_continue_and_chunked_trailer(s3, bucket):
    body = bytes(range(256)) * 8192  # 2 MiB, sent by botocore as aws-chunked with a trailing CRC32
    s3.put_object(Bucket=bucket, Key="big", Body=body)
    s3.put_object(Bucket=bucket, Key="big", Body=body, WriteOffsetBytes=len(body))
    assert s3.get_object(Bucket=bucket, Key="big", ChecksumMode="ENABLED")["Body"].read() == body * 2


def test_boto3_bucket_and_listing(s3, bucket):
    keys = ["a/1.log", "a/2.log", "b/../c", "d//e", "z/", "ünïcode/ключ.log", "sp ace+plus%25"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    listed = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listed["Contents"]] == sorted(keys, key=lambda k: k.encode())
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    grouped = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["a/", "b/", "d/", "z/", "ünïcode/"]
    assert [o["Key"] for o in grouped["Contents"]] == ["sp ace+plus%25"]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2})
    assert [o["Key"] for page in pages for o in page.get("Contents", [])] == sorted(keys, key=lambda k: k.encode())
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as info:
        s3.delete_bucket(Bucket=bucket)
    assert info.value.response["Error"]["Code"] == "BucketNotEmpty"
    for key in keys:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket=bucket)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_aws_cli_cp_ls_and_head_object(server, bucket, aws_env, tmp_path):
    src = tmp_path / "app.log"
    src.write_bytes(b"".join(b"line %d\n" % i for i in range(10000)))
    assert aws(server, aws_env, "s3", "cp", str(src), f"s3://{bucket}/logs/app.log").returncode == 0
    listing = aws(server, aws_env, "s3", "ls", f"s3://{bucket}/logs/")
    assert listing.returncode == 0 and b"app.log" in listing.stdout
    size = aws(server, aws_env, "s3api", "head-object", "--bucket", bucket, "--key", "logs/app.log",
               "--query", "ContentLength")
    assert size.returncode == 0, size.stderr
    assert json.loads(size.stdout) == src.stat().st_size
    back = aws(server, aws_env, "s3", "cp", f"s3://{bucket}/logs/app.log", "-")
    assert back.returncode == 0 and back.stdout == src.read_bytes()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_aws_sigv4_append(server, s3, bucket, tmp_path):
    s3.put_object(Bucket=bucket, Key="key", Body=b"x" * 1024)
    chunk = tmp_path / "chunk"
    chunk.write_bytes(b"appended by curl\n")
    cmd = ["curl", "-sS", "--fail-with-body", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
           f"{ACCESS_KEY}:{SECRET_KEY}", "-H", "x-amz-write-offset-bytes: 1024", "--data-binary", f"@{chunk}",
           f"{server.url}/{bucket}/key"]
    result = subprocess.run(cmd, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert s3.get_object(Bucket=bucket, Key="key")["Body"].read() == b"x" * 1024 + b"appended by curl\n"
    again = subprocess.run(cmd, capture_output=True, timeout=30)
    assert again.returncode != 0 and b"<Code>InvalidArgument</Code>" in again.stdout


def test_virtual_host_style_addressing(server, http, bucket):
    host = f"{bucket}.localhost:{server.port}"
    put = http.put(f"{server.url}/vh/app.log", content=b"via the host\n", headers={"host": host})
    assert put.status_code == 200, put.text
    appended = http.put(f"{server.url}/vh/app.log", content=b"more\n",
                        headers={"host": host, "x-amz-write-offset-bytes": "13"})
    assert appended.status_code == 200, appended.text
    assert http.get(f"/{bucket}/vh/app.log").content == b"via the host\nmore\n"  # the same object, path-style
    missing = http.get("/vh/app.log")  # the same path with the plain host: bucket vh (the server remembers by both)
    assert missing.status_code == 404 and b"<BucketName>vh</BucketName>" in missing.content, missing.text
    listing = http.get(f"{server.url}/?list-type=2", headers={"host": host})
    assert listing.status_code == 200 and b"<Key>vh/app.log</Key>" in listing.content
