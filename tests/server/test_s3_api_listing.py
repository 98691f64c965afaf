"""ListObjects v1/v2 and ListObjectVersions against the real server, through boto3's paginators."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

KEYS = ["a/1", "a/2", "a/b/3", "b", "c/1", "d e+f", "z", "é/x"]  # UTF-8 byte order


@pytest.fixture
def filled(s3, bucket):
    for key in KEYS:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    return bucket


def test_v1_marker_and_next_marker(s3, filled):
    page = s3.list_objects(Bucket=filled, MaxKeys=3)
    assert [o["Key"] for o in page["Contents"]] == KEYS[:3] and page["IsTruncated"]
    assert "NextMarker" not in page  # only with a delimiter, as S3 does
    rest = s3.list_objects(Bucket=filled, Marker=page["Contents"][-1]["Key"])
    assert [o["Key"] for o in rest["Contents"]] == KEYS[3:] and not rest["IsTruncated"]
    assert "Owner" in rest["Contents"][0]
    grouped = s3.list_objects(Bucket=filled, Delimiter="/", MaxKeys=2)
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["a/"] and grouped["NextMarker"] == "b"
    after = s3.list_objects(Bucket=filled, Delimiter="/", Marker="a/")  # a common prefix as marker skips its group
    assert [o["Key"] for o in after["Contents"]][0] == "b"


@pytest.mark.parametrize("operation", ["list_objects", "list_objects_v2"])
def test_paginators_see_every_key_once(s3, filled, operation):
    pages = s3.get_paginator(operation).paginate(Bucket=filled, PaginationConfig={"PageSize": 2})
    assert [o["Key"] for page in pages for o in page.get("Contents", [])] == KEYS
    pages = s3.get_paginator(operation).paginate(Bucket=filled, Delimiter="/", PaginationConfig={"PageSize": 2})
    keys, prefixes = [], []
    for page in pages:
        keys += [o["Key"] for o in page.get("Contents", [])]
        prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
    assert keys == ["b", "d e+f", "z"] and prefixes == ["a/", "c/", "é/"]


def test_v2_start_after_key_count_and_fetch_owner(s3, filled):
    page = s3.list_objects_v2(Bucket=filled, StartAfter="a/b/3", MaxKeys=2)
    assert [o["Key"] for o in page["Contents"]] == ["b", "c/1"]
    assert page["KeyCount"] == 2 and page["IsTruncated"] and page["StartAfter"] == "a/b/3"
    assert "Owner" not in page["Contents"][0]
    owned = s3.list_objects_v2(Bucket=filled, FetchOwner=True, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in owned["Contents"]] == ["a/1", "a/2"] and "Owner" in owned["Contents"][0]
    assert owned["CommonPrefixes"] == [{"Prefix": "a/b/"}] and owned["KeyCount"] == 3


def test_encoding_type_url(http, filled):
    answer = http.get(f"/{filled}?list-type=2&encoding-type=url&prefix=d%20e")  # (httpx params would send '+')
    assert b"<Key>d%20e%2Bf</Key>" in answer.content and b"<Prefix>d%20e</Prefix>" in answer.content
    answer = http.get(f"/{filled}?encoding-type=url&prefix=%C3%A9&delimiter=/")
    assert b"<Prefix>%C3%A9/</Prefix>" in answer.content
    answer = http.get(f"/{filled}", params={"encoding-type": "base64"})
    assert answer.status_code == 400 and b"InvalidArgument" in answer.content


def test_listing_a_missing_bucket(s3):
    for call in (s3.list_objects, s3.list_objects_v2, s3.list_object_versions):
        with pytest.raises(ClientError) as exc:
            call(Bucket="no-such-bucket-listed")
        assert exc.value.response["Error"]["Code"] == "NoSuchBucket"


def test_object_versions_on_an_unversioned_bucket(s3, filled):
    listing = s3.list_object_versions(Bucket=filled)
    assert [(v["Key"], v["VersionId"], v["IsLatest"]) for v in listing["Versions"]] == [(k, "null", True) for k in KEYS]
    assert listing["Versions"][0]["ETag"] == s3.head_object(Bucket=filled, Key=KEYS[0])["ETag"]
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=filled, PaginationConfig={"PageSize": 3})
    assert [v["Key"] for page in pages for v in page.get("Versions", [])] == KEYS
    page = s3.list_object_versions(Bucket=filled, MaxKeys=2)
    assert (page["NextKeyMarker"], page["NextVersionIdMarker"], page["IsTruncated"]) == ("a/2", "null", True)
    rest = s3.list_object_versions(Bucket=filled, KeyMarker="a/2", VersionIdMarker="null", Prefix="a/")
    assert [v["Key"] for v in rest["Versions"]] == ["a/b/3"]
    grouped = s3.list_object_versions(Bucket=filled, Delimiter="/")
    assert [p["Prefix"] for p in grouped["CommonPrefixes"]] == ["a/", "c/", "é/"]
    assert [v["Key"] for v in grouped["Versions"]] == ["b", "d e+f", "z"]


def test_version_markers_and_ids(s3, filled, http):
    answer = http.get(f"/{filled}", params={"versions": "", "version-id-marker": "null"})
    assert answer.status_code == 400 and b"InvalidArgument" in answer.content
    assert s3.get_object(Bucket=filled, Key="b", VersionId="null")["Body"].read() == b"b"
    assert s3.head_object(Bucket=filled, Key="b", VersionId="null")["ContentLength"] == 1
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=filled, Key="b", VersionId="3HL4kqtJlcpXroDTDmJ")
    assert exc.value.response["Error"]["Code"] == "InvalidArgument"
    s3.delete_object(Bucket=filled, Key="b", VersionId="null")
    assert "b" not in [v["Key"] for v in s3.list_object_versions(Bucket=filled)["Versions"]]


def test_max_keys_zero_is_an_empty_untruncated_page(s3, filled):
    page = s3.list_objects_v2(Bucket=filled, MaxKeys=0)
    assert "Contents" not in page and not page["IsTruncated"] and page["KeyCount"] == 0
    assert not s3.list_object_versions(Bucket=filled, MaxKeys=0)["IsTruncated"]
