"""The aws CLI's high-level commands against the real server: s3 sync, cp --recursive, rm --recursive, s3api."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

AWS = str(Path(sys.executable).with_name("aws"))
MiB = 1024 * 1024


def aws(server, env, *args: str) -> subprocess.CompletedProcess:
    # A short read timeout bounds the cost of a lost response (the CLI retries): now and then one PUT's
    # 200 is logged by the server but never reaches the client -- an HTTP-layer issue reported separately.
    cmd = [AWS, "--endpoint-url", server.url, "--cli-read-timeout", "10", *args]
    run = subprocess.run(cmd, env=env, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    return run


def make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "app.log": b"line\n" * 1000,
        "nested/deeper/events.log": os.urandom(10_000),
        "with space/é.txt": "unicodé\n".encode(),
        "big/blob.bin": os.urandom(9 * MiB),  # multipart
        "empty": b"",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_sync_cp_recursive_and_rm_recursive(server, bucket, aws_env, tmp_path, s3):
    source = tmp_path / "source"
    files = make_tree(source)
    aws(server, aws_env, "s3", "sync", str(source), f"s3://{bucket}/backup")
    keys = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"backup/{name}": len(data) for name, data in files.items()}

    again = aws(server, aws_env, "s3", "sync", str(source), f"s3://{bucket}/backup")
    assert again.stdout.strip() == b""  # nothing changed: nothing copied

    (source / "app.log").write_bytes(b"changed and longer\n" * 100)
    (source / "new.log").write_bytes(b"new\n")
    changed = aws(server, aws_env, "s3", "sync", str(source), f"s3://{bucket}/backup")
    assert b"new.log" in changed.stdout and b"app.log" in changed.stdout and b"events.log" not in changed.stdout

    down = tmp_path / "down"
    aws(server, aws_env, "s3", "cp", "--recursive", f"s3://{bucket}/backup", str(down))
    assert tree(down) == tree(source)

    # bucket to bucket: CopyObject, and UploadPartCopy for the 9 MiB file
    aws(server, aws_env, "s3", "cp", "--recursive", f"s3://{bucket}/backup", f"s3://{bucket}/copied")
    assert s3.get_object(Bucket=bucket, Key="copied/big/blob.bin")["Body"].read() == files["big/blob.bin"]
    assert s3.head_object(Bucket=bucket, Key="copied/big/blob.bin")["ETag"].endswith('-2"')
    assert s3.get_object(Bucket=bucket, Key="copied/nested/deeper/events.log")["Body"].read() == files[
        "nested/deeper/events.log"
    ]

    aws(server, aws_env, "s3", "rm", "--recursive", f"s3://{bucket}/backup")
    left = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert left == sorted(f"copied/{name}" for name in tree(source))
    assert "Uploads" not in s3.list_multipart_uploads(Bucket=bucket)


def test_s3api_multipart_and_copy_commands(server, bucket, aws_env, tmp_path):
    part = tmp_path / "part"
    part.write_bytes(b"part one\n")
    created = json.loads(aws(server, aws_env, "s3api", "create-multipart-upload", "--bucket", bucket, "--key", "k").stdout)
    upload_id = created["UploadId"]
    listed = json.loads(aws(server, aws_env, "s3api", "list-multipart-uploads", "--bucket", bucket).stdout)
    assert [u["UploadId"] for u in listed["Uploads"]] == [upload_id]
    etag = json.loads(aws(server, aws_env, "s3api", "upload-part", "--bucket", bucket, "--key", "k", "--part-number",
                          "1", "--upload-id", upload_id, "--body", str(part)).stdout)["ETag"]
    parts = json.dumps({"Parts": [{"PartNumber": 1, "ETag": etag}]})
    aws(server, aws_env, "s3api", "complete-multipart-upload", "--bucket", bucket, "--key", "k", "--upload-id",
        upload_id, "--multipart-upload", parts)
    aws(server, aws_env, "s3api", "copy-object", "--bucket", bucket, "--key", "k2", "--copy-source", f"{bucket}/k")
    deleted = json.loads(aws(server, aws_env, "s3api", "delete-objects", "--bucket", bucket, "--delete",
                             json.dumps({"Objects": [{"Key": "k"}, {"Key": "k2"}]})).stdout)
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["k", "k2"]
    versions = json.loads(aws(server, aws_env, "s3api", "list-object-versions", "--bucket", bucket).stdout)
    assert "Versions" not in versions
