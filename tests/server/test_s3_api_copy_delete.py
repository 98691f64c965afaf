"""CopyObject and DeleteObjects against the real server (boto3, raw httpx where boto3 would not send it)."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import quote

import pytest
from botocore.exceptions import ClientError

from server.timefmt import http_date


def code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


def test_copy_keeps_or_replaces_metadata(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"hello", ContentType="text/plain", Metadata={"a": "1"})
    result = s3.copy_object(Bucket=bucket, Key="same", CopySource={"Bucket": bucket, "Key": "src"},
                            ContentType="ignored/type", Metadata={"b": "2"})
    assert result["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'
    head = s3.head_object(Bucket=bucket, Key="same")
    assert (head["ContentType"], head["Metadata"]) == ("text/plain", {"a": "1"})  # COPY is the default
    s3.copy_object(Bucket=bucket, Key="new", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
                   ContentType="application/json", Metadata={"b": "2"})
    head = s3.head_object(Bucket=bucket, Key="new")
    assert (head["ContentType"], head["Metadata"]) == ("application/json", {"b": "2"})
    assert s3.get_object(Bucket=bucket, Key="new")["Body"].read() == b"hello"


def test_copy_onto_itself_needs_replace(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"data", Metadata={"v": "1"})
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"})
    assert code(exc) == "InvalidRequest" and "copy an object to itself" in exc.value.response["Error"]["Message"]
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"}, MetadataDirective="REPLACE",
                   Metadata={"v": "2"})
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["Metadata"] == {"v": "2"} and s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"


@pytest.mark.parametrize("key", ["with space/and+plus", "unicodé/ключ", "q?x=1&y", "percent%2F"])
def test_copy_source_with_url_encoded_keys(s3, bucket, http, key):
    s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": key})
    assert s3.get_object(Bucket=bucket, Key="copy")["Body"].read() == key.encode()
    raw = http.put(f"/{bucket}/raw", headers={"x-amz-copy-source": f"/{bucket}/{quote(key)}?versionId=null"})
    assert raw.status_code == 200 and b"<CopyObjectResult" in raw.content
    assert s3.get_object(Bucket=bucket, Key="raw")["Body"].read() == key.encode()


def test_copy_refusals(s3, bucket, http):
    s3.put_object(Bucket=bucket, Key="src", Body=b"abc")

    def refused(headers: dict[str, str]) -> tuple[int, bytes]:
        answer = http.put(f"/{bucket}/dst", headers={"x-amz-copy-source": f"{bucket}/src", **headers})
        return answer.status_code, answer.content

    assert refused({"x-amz-copy-source": f"{bucket}/src?versionId=v1"})[0] == 400
    assert refused({"x-amz-copy-source": bucket})[0] == 400
    status, body = refused({"x-amz-copy-source-range": "bytes=0-1"})
    assert status == 400 and b"InvalidArgument" in body
    status, body = refused({"x-amz-metadata-directive": "MERGE"})
    assert status == 400 and b"InvalidArgument" in body
    status, body = refused({"x-amz-copy-source": f"{bucket}/missing"})
    assert status == 404 and b"NoSuchKey" in body
    status, body = refused({"x-amz-copy-source": "no-such-bucket-here/src"})
    assert status == 404 and b"NoSuchBucket" in body
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="dst")


def test_copy_source_conditions(s3, bucket):
    etag = s3.put_object(Bucket=bucket, Key="src", Body=b"abc")["ETag"]
    modified = s3.head_object(Bucket=bucket, Key="src")["LastModified"].timestamp()
    before, after = http_date(modified - 3600), http_date(modified + 3600)
    source = {"Bucket": bucket, "Key": "src"}
    failing = [
        {"CopySourceIfMatch": '"0123"'},
        {"CopySourceIfNoneMatch": etag},
        {"CopySourceIfModifiedSince": after},
        {"CopySourceIfUnmodifiedSince": before},
    ]
    for conditions in failing:
        with pytest.raises(ClientError) as exc:
            s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, **conditions)
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412, conditions
        assert code(exc) == "PreconditionFailed"
    # S3's documented pairs: If-Match true wins over If-Unmodified-Since false; If-None-Match true over If-Modified-Since false
    s3.copy_object(Bucket=bucket, Key="dst", CopySource=source, CopySourceIfMatch=etag,
                   CopySourceIfUnmodifiedSince=before)
    s3.copy_object(Bucket=bucket, Key="dst2", CopySource=source, CopySourceIfNoneMatch='"other"',
                   CopySourceIfModifiedSince=after)
    assert s3.get_object(Bucket=bucket, Key="dst2")["Body"].read() == b"abc"


def test_copied_object_is_appendable_and_keeps_its_checksum_algorithm(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"first\n", ChecksumAlgorithm="CRC32C")
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    s3.put_object(Bucket=bucket, Key="dst", Body=b"second\n", WriteOffsetBytes=6)
    got = s3.get_object(Bucket=bucket, Key="dst", ChecksumMode="ENABLED")  # boto3 validates CRC32C
    assert got["Body"].read() == b"first\nsecond\n" and "ChecksumCRC32C" in got
    assert s3.get_object(Bucket=bucket, Key="src")["Body"].read() == b"first\n"


def test_delete_objects_verbose_quiet_and_errors(s3, bucket):
    for key in ("a", "b", "c", "d"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": "a"}, {"Key": "missing"}, {"Key": "b", "VersionId": "null"}, {"Key": "c", "VersionId": "v2"},
    ]})  # fmt: skip
    assert sorted(d["Key"] for d in answer["Deleted"]) == ["a", "b", "missing"]
    assert [(e["Key"], e["Code"]) for e in answer["Errors"]] == [("c", "NoSuchVersion")]
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "c"}, {"Key": "d"}], "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def _delete_body(keys: list[str]) -> bytes:
    objects = "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
    return f'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{objects}</Delete>'.encode()


def _md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def test_delete_objects_request_rules(s3, bucket, http):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    body = _delete_body(["k"])
    answer = http.post(f"/{bucket}", params={"delete": ""}, content=body)
    assert answer.status_code == 400 and b"Content-MD5" in answer.content  # neither Content-MD5 nor a checksum
    answer = http.post(f"/{bucket}", params={"delete": ""}, content=body, headers={"content-md5": _md5(b"other")})
    assert answer.status_code == 400 and b"BadDigest" in answer.content
    too_many = _delete_body([f"k{i}" for i in range(1001)])
    answer = http.post(f"/{bucket}", params={"delete": ""}, content=too_many, headers={"content-md5": _md5(too_many)})
    assert answer.status_code == 400 and b"MalformedXML" in answer.content
    bad = b"<Delete><Object></Object></Delete>"
    answer = http.post(f"/{bucket}", params={"delete": ""}, content=bad, headers={"content-md5": _md5(bad)})
    assert answer.status_code == 400 and b"MalformedXML" in answer.content
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"  # no refused request deleted anything
    answer = http.post(f"/{bucket}", params={"delete": ""}, content=body, headers={"content-md5": _md5(body)})
    assert answer.status_code == 200 and b"<Deleted><Key>k</Key></Deleted>" in answer.content


def test_delete_objects_thousand_keys(s3, bucket):
    keys = [f"many/{i:04d}" for i in range(1000)]
    for key in keys[:50]:
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    assert len(answer["Deleted"]) == 1000 and "Errors" not in answer
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
