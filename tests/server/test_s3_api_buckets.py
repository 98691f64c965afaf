"""Bucket rules (names, ownership, missing buckets) and the configuration sub-resources' defaults."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError

from server.buckets import validate_bucket_name
from server.errors import InvalidBucketName
from tests.support import ACCESS_KEY, REGION, SECRET_KEY


def code(exc: pytest.ExceptionInfo) -> str:
    return exc.value.response["Error"]["Code"]


@pytest.mark.parametrize(
    "name",
    ["ab", "a" * 64, "UPPER", "under_score", "-start", "end-", ".start", "end.", "two..dots", "dot.-dash",
     "192.168.5.4", "xn--punycode", "sthree-bucket", "amzn-s3-demo-bucket", "alias-s3alias", "lambda--ol-s3",
     "point.mrap", "table--table-s3", "spa ce", "ünicode"],
)  # fmt: skip
def test_invalid_bucket_names(http, name):
    with pytest.raises(InvalidBucketName):
        validate_bucket_name(name)
    answer = http.put("/" + name.replace(" ", "%20").replace("ü", "%C3%BC"))
    assert answer.status_code == 400 and b"<Code>InvalidBucketName</Code>" in answer.content


@pytest.mark.parametrize("name", ["abc", "a" * 63, "my.bucket.name", "a-b-c", "192.168.5.4x", "logs--x-s3"])
def test_valid_bucket_names(name):
    validate_bucket_name(name)


def test_creating_twice_and_missing_buckets(s3):
    s3.create_bucket(Bucket="owned-twice")
    s3.create_bucket(Bucket="owned-twice")  # us-east-1: 200 for a bucket you own
    for call in (lambda: s3.get_bucket_location(Bucket="never-made"), lambda: s3.delete_bucket(Bucket="never-made"),
                 lambda: s3.get_object(Bucket="never-made", Key="k"), lambda: s3.put_object(Bucket="never-made", Key="k", Body=b"x")):  # fmt: skip
        with pytest.raises(ClientError) as exc:
            call()
        assert code(exc) == "NoSuchBucket"
    s3.delete_bucket(Bucket="owned-twice")


def test_someone_elses_bucket_already_exists(make_server, tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("keys:\n  - {access_key: other-admin, secret_key: other-secret, grants: [{role: admin}]}\n")
    server = make_server("--config", str(config))

    def client(key: str, secret: str):
        return boto3.client("s3", endpoint_url=server.url, aws_access_key_id=key, aws_secret_access_key=secret,
                            region_name=REGION)  # fmt: skip

    mine, theirs = client(ACCESS_KEY, SECRET_KEY), client("other-admin", "other-secret")
    mine.create_bucket(Bucket="taken")
    with pytest.raises(ClientError) as exc:
        theirs.create_bucket(Bucket="taken")
    assert code(exc) == "BucketAlreadyExists" and exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 409
    mine.create_bucket(Bucket="taken")
    server.stop()
    server.restart()  # ownership is stored
    with pytest.raises(ClientError) as exc:
        theirs.create_bucket(Bucket="taken")
    assert code(exc) == "BucketAlreadyExists"


def test_configuration_defaults(s3, bucket):
    versioning = s3.get_bucket_versioning(Bucket=bucket)
    assert "Status" not in versioning and "MFADelete" not in versioning
    acl = s3.get_bucket_acl(Bucket=bucket)
    assert [g["Permission"] for g in acl["Grants"]] == ["FULL_CONTROL"]
    assert acl["Grants"][0]["Grantee"]["ID"] == acl["Owner"]["ID"]
    assert "LoggingEnabled" not in s3.get_bucket_logging(Bucket=bucket)
    assert s3.get_bucket_request_payment(Bucket=bucket)["Payer"] == "BucketOwner"
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []
    assert s3.get_object_acl(Bucket=bucket, Key="k")["Grants"][0]["Permission"] == "FULL_CONTROL"
    with pytest.raises(ClientError) as exc:
        s3.get_object_acl(Bucket=bucket, Key="missing")
    assert code(exc) == "NoSuchKey"


@pytest.mark.parametrize(
    "call, expected",
    [
        ("get_bucket_encryption", "ServerSideEncryptionConfigurationNotFoundError"),
        ("get_bucket_policy", "NoSuchBucketPolicy"),
        ("get_bucket_lifecycle_configuration", "NoSuchLifecycleConfiguration"),
        ("get_bucket_tagging", "NoSuchTagSet"),
        ("get_bucket_cors", "NoSuchCORSConfiguration"),
        ("get_bucket_website", "NoSuchWebsiteConfiguration"),
        ("get_bucket_ownership_controls", "OwnershipControlsNotFoundError"),
        ("get_public_access_block", "NoSuchPublicAccessBlockConfiguration"),
        ("get_object_lock_configuration", "ObjectLockConfigurationNotFoundError"),
        ("get_bucket_replication", "ReplicationConfigurationNotFoundError"),
    ],
)
def test_absent_configurations(s3, bucket, call, expected):
    with pytest.raises(ClientError) as exc:
        getattr(s3, call)(Bucket=bucket)
    assert code(exc) == expected and exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as exc:
        getattr(s3, call)(Bucket="no-such-bucket-config")
    assert code(exc) == "NoSuchBucket"


def test_setting_configurations_is_not_implemented_and_deleting_absent_ones_is_fine(s3, bucket, http):
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert code(exc) == "NotImplemented" and exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
    with pytest.raises(ClientError) as exc:
        s3.put_bucket_policy(Bucket=bucket, Policy="{}")
    assert code(exc) == "NotImplemented"
    s3.delete_bucket_policy(Bucket=bucket)
    s3.delete_bucket_lifecycle(Bucket=bucket)
    s3.delete_bucket_tagging(Bucket=bucket)
    for query in ("analytics", "inventory", "metrics", "intelligent-tiering", "torrent", "select"):
        answer = http.get(f"/{bucket}?{query}")
        assert answer.status_code == 501 and b"<Code>NotImplemented</Code>" in answer.content, query
    assert s3.get_bucket_versioning(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200
