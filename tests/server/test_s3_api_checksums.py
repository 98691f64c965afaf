"""Full-object checksums kept across appends and reported with x-amz-checksum-mode: ENABLED.

boto3 validates the checksum it is given on GET (``ChecksumMode="ENABLED"``),
so a stale value fails these tests by itself.
"""

from __future__ import annotations

import base64
import hashlib

import boto3
import pytest
from awscrt import checksums as crt
from botocore.exceptions import ClientError

from server import checksums
from server.records import BodyHasher, NewObject, ObjectInfo, StoredChecksum
from tests.support import ACCESS_KEY, REGION, SECRET_KEY


def digest(algorithm: str, data: bytes) -> str:
    hasher = checksums.FACTORIES[algorithm]()
    hasher.update(data)
    return base64.b64encode(hasher.digest()).decode()


@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "CRC64NVME"])
def test_crc_kept_across_appends(s3, bucket, algorithm):
    name = f"Checksum{algorithm}"
    put = s3.put_object(Bucket=bucket, Key="log", Body=b"one\n", ChecksumAlgorithm=algorithm)
    assert put[name] == digest(algorithm.lower(), b"one\n")
    data = b"one\n"
    for line in (b"two\n", b"three\n" * 1000):
        s3.put_object(Bucket=bucket, Key="log", Body=line, WriteOffsetBytes=len(data), ChecksumAlgorithm=algorithm)
        data += line
        head = s3.head_object(Bucket=bucket, Key="log", ChecksumMode="ENABLED")
        assert head[name] == digest(algorithm.lower(), data) and head["ChecksumType"] == "FULL_OBJECT"
        got = s3.get_object(Bucket=bucket, Key="log", ChecksumMode="ENABLED")
        assert got["Body"].read() == data


def test_the_created_algorithm_wins_over_an_appends(s3, bucket):
    s3.put_object(Bucket=bucket, Key="log", Body=b"a", ChecksumAlgorithm="CRC64NVME")
    s3.put_object(Bucket=bucket, Key="log", Body=b"b", WriteOffsetBytes=1, ChecksumAlgorithm="CRC32C")
    head = s3.head_object(Bucket=bucket, Key="log", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == digest("crc64nvme", b"ab") and "ChecksumCRC32C" not in head


@pytest.mark.parametrize("algorithm", ["SHA256", "SHA1"])
def test_sha_is_reported_until_an_append_then_crc32(s3, bucket, algorithm):
    s3.put_object(Bucket=bucket, Key="k", Body=b"first", ChecksumAlgorithm=algorithm)
    got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert got[f"Checksum{algorithm}"] == digest(algorithm.lower(), b"first") and got["Body"].read() == b"first"
    s3.put_object(Bucket=bucket, Key="k", Body=b"+more", WriteOffsetBytes=5)
    got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert f"Checksum{algorithm}" not in got  # a SHA cannot be extended: dropped, never stale
    assert got["ChecksumCRC32"] == digest("crc32", b"first+more") and got["Body"].read() == b"first+more"


def test_plain_put_replaces_the_checksum(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"x", ChecksumAlgorithm="SHA256")
    s3.put_object(Bucket=bucket, Key="k", Body=b"y", ChecksumAlgorithm="CRC32")
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == digest("crc32", b"y") and "ChecksumSHA256" not in head


def test_ranged_get_has_no_full_object_checksum(s3, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"0123456789", ChecksumAlgorithm="CRC32C")
    got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED", Range="bytes=2-4")
    assert got["Body"].read() == b"234" and "ChecksumCRC32C" not in got


def test_wrong_checksum_is_refused_and_changes_nothing(s3, bucket, http):
    s3.put_object(Bucket=bucket, Key="k", Body=b"keep", ChecksumAlgorithm="CRC32C")
    answer = http.put(f"/{bucket}/k", content=b"more", headers={
        "x-amz-write-offset-bytes": "4", "x-amz-checksum-crc32c": digest("crc32c", b"else")})  # fmt: skip
    assert answer.status_code == 400 and b"BadDigest" in answer.content
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head["ContentLength"] == 4 and head["ChecksumCRC32C"] == digest("crc32c", b"keep")


def test_checksums_survive_a_restart(make_server):
    server = make_server()
    s3 = boto3.client("s3", endpoint_url=server.url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                      region_name=REGION)
    s3.create_bucket(Bucket="sums")
    s3.put_object(Bucket="sums", Key="k", Body=b"before", ChecksumAlgorithm="CRC32C")
    server.stop()
    server.restart()
    s3.put_object(Bucket="sums", Key="k", Body=b" after", WriteOffsetBytes=6)
    got = s3.get_object(Bucket="sums", Key="k", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32C"] == digest("crc32c", b"before after") and got["Body"].read() == b"before after"


def test_unknown_checksum_algorithm_is_refused(s3, bucket, http):
    answer = http.put(f"/{bucket}/k", content=b"x", headers={"x-amz-sdk-checksum-algorithm": "MD4"})
    assert answer.status_code == 400 and b"InvalidRequest" in answer.content
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="k")


# -- the pure rules ----------------------------------------------------------------


def _info(checksum: StoredChecksum | None, data: bytes) -> ObjectInfo:
    return ObjectInfo("b", "k", len(data), hashlib.md5(data).hexdigest(), 0.0, None, {}, {}, crt.crc32(data), 1,
                      checksum)  # fmt: skip


def test_stored_checksum_round_trip() -> None:
    for stored in (StoredChecksum("crc64nvme", "AAAAAAAAAAA="), StoredChecksum("sha256", "abc=-3", "COMPOSITE")):
        assert StoredChecksum.decode(stored.encode()) == stored
    assert StoredChecksum.decode(None) is None


def test_body_hasher_extends_crcs_and_drops_the_rest() -> None:
    kept = StoredChecksum("crc32c", digest("crc32c", b"abc"))
    hasher = BodyHasher.for_append(_info(kept, b"abc"))
    hasher.update(b"def")
    assert hasher.object_checksum(kept) == StoredChecksum("crc32c", digest("crc32c", b"abcdef"))
    assert hasher.object_crc32 == crt.crc32(b"abcdef")
    for dropped in (StoredChecksum("sha1", digest("sha1", b"abc")), StoredChecksum("crc32", "AAAAAA==-2", "COMPOSITE")):
        hasher = BodyHasher.for_append(_info(dropped, b"abc"))
        hasher.update(b"def")
        assert hasher.object_checksum(dropped) is None
    fresh = BodyHasher.for_new(NewObject(checksum_algorithm="sha256"))
    fresh.update(b"xyz")
    assert base64.b64encode(fresh.extra.digest()).decode() == digest("sha256", b"xyz")


V1_SCHEMA = """
CREATE TABLE buckets (name TEXT PRIMARY KEY, created REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE objects (
    bucket TEXT NOT NULL REFERENCES buckets(name), key TEXT NOT NULL, file_id TEXT NOT NULL, size INTEGER NOT NULL,
    etag TEXT NOT NULL, last_modified REAL NOT NULL, content_type TEXT, metadata TEXT NOT NULL, system TEXT NOT NULL,
    crc32 INTEGER, appends INTEGER NOT NULL, PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
PRAGMA user_version = 1;
"""


async def test_a_version_1_index_is_migrated(tmp_path):
    """A data dir written before checksums and owners were kept opens, reads and appends."""
    import sqlite3

    from server.storage import open_storage

    file_id = "ab" + "1" * 30
    (tmp_path / "objects" / "ab").mkdir(parents=True)
    (tmp_path / "objects" / "ab" / file_id).write_bytes(b"old")
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    conn.executescript(V1_SCHEMA)
    conn.execute("INSERT INTO buckets VALUES ('old', 1.0)")
    conn.execute("INSERT INTO objects VALUES ('old', 'k', ?, 3, ?, 1.0, NULL, '{}', '{}', ?, 1)",
                 (file_id, hashlib.md5(b"old").hexdigest(), crt.crc32(b"old")))  # fmt: skip
    conn.commit()
    conn.close()

    async def chunks(data: bytes):
        yield data

    async with open_storage(tmp_path) as storage:  # fsync: the append keeps the row's previous state
        info = await storage.write_object("old", "k", chunks(b"+new"), offset=3)
        assert (info.size, info.crc32, info.checksum) == (7, crt.crc32(b"old+new"), None)
        await storage.create_bucket("fresh", owner="someone")
    conn = sqlite3.connect(tmp_path / "index.sqlite3")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("SELECT prev_size, prev_crc32 FROM objects").fetchall() == [(3, crt.crc32(b"old"))]
    assert conn.execute("SELECT name, owner FROM buckets ORDER BY name").fetchall() == [("fresh", "someone"), ("old", None)]
    conn.close()


def _trailer_body(data: bytes, algorithm: str, value: str) -> tuple[bytes, dict[str, str]]:
    """An unsigned aws-chunked body whose checksum comes as a trailer (what SDKs send over HTTPS)."""
    body = f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n" + f"x-amz-checksum-{algorithm}:{value}\r\n\r\n".encode()
    headers = {
        "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER", "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(data)), "x-amz-trailer": f"x-amz-checksum-{algorithm}",
    }  # fmt: skip
    return body, headers


def test_trailing_checksums_on_put_and_upload_part(s3, bucket, http):
    body, headers = _trailer_body(b"via trailer", "crc64nvme", digest("crc64nvme", b"via trailer"))
    assert http.put(f"/{bucket}/t", content=body, headers=headers).status_code == 200
    head = s3.head_object(Bucket=bucket, Key="t", ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == digest("crc64nvme", b"via trailer")  # the trailer's algorithm is kept
    wrong, headers = _trailer_body(b"via trailer", "crc64nvme", digest("crc64nvme", b"other"))
    answer = http.put(f"/{bucket}/t2", content=wrong, headers=headers)
    assert answer.status_code == 400 and b"BadDigest" in answer.content

    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp", ChecksumAlgorithm="SHA256")["UploadId"]
    body, headers = _trailer_body(b"part", "sha256", digest("sha256", b"part"))
    answer = http.put(f"/{bucket}/mp", params={"partNumber": "1", "uploadId": upload_id}, content=body, headers=headers)
    assert answer.status_code == 200 and answer.headers["x-amz-checksum-sha256"] == digest("sha256", b"part")
    body, headers = _trailer_body(b"part", "crc32", digest("crc32", b"part"))  # not the upload's algorithm
    answer = http.put(f"/{bucket}/mp", params={"partNumber": "2", "uploadId": upload_id}, content=body, headers=headers)
    assert answer.status_code == 400 and b"InvalidRequest" in answer.content
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["ChecksumSHA256"]) for p in parts] == [(1, digest("sha256", b"part"))]
