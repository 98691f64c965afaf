"""Access control against the real server: the permission matrix, prefix scopes, sessions, config.

One server for the module, started with a ``keys:`` config; boto3 clients
sign as each key.  Every refusal is checked to change nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import trio
from botocore.config import Config
from botocore.exceptions import ClientError

from server import subresources
from server.config import ConfigError, parse_config
from server.errors import AccessDenied
from server.policy import Grant, Principal, Role, authorize, session_principal
from sink.session import parse_create_session
from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, SECRET_KEY, ServerProcess, client_env

ROLES = ("read", "append", "write", "admin")
AWS = str(Path(sys.executable).with_name("aws"))
AGENT_SECRET = "agent-secret-from-the-environment"
CONFIG = """\
keys:
  - {access_key: k-read, secret_key: s-read, grants: [{role: read}]}
  - {access_key: k-append, secret_key: s-append, grants: [{role: append}]}
  - {access_key: k-write, secret_key: s-write, grants: [{role: write}]}
  - {access_key: k-admin, secret_key: s-admin, grants: [{role: admin}]}
  - access_key: agent-web1
    secret_key: ${AGENT_SECRET}
    grants: [{role: append, bucket: logs, prefix: web1/}]
  - access_key: reader-logs
    secret_key: s-reader-logs
    grants: [{role: read, bucket: logs}]
  - {access_key: cleaner-web1, secret_key: s-cleaner, grants: [{role: write, bucket: logs, prefix: web1/}]}
  - access_key: archiver
    secret_key: s-archiver
    grants: [{role: read, bucket: other}, {role: append, bucket: logs, prefix: archive/}]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("acl")
    (tmp / "server.yaml").write_text(CONFIG)
    proc = ServerProcess(tmp / "data", ["--config", str(tmp / "server.yaml")], {"AGENT_SECRET": AGENT_SECRET}).start()
    yield proc
    proc.stop()


def client(server: ServerProcess, access_key: str, secret: str):
    return boto3.client(
        "s3", endpoint_url=server.url, aws_access_key_id=access_key, aws_secret_access_key=secret,
        region_name=REGION, config=Config(retries={"max_attempts": 1}),
    )  # fmt: skip


@pytest.fixture(scope="module")
def clients(server):
    made = {role: client(server, f"k-{role}", f"s-{role}") for role in ROLES}
    made["root"] = client(server, ACCESS_KEY, SECRET_KEY)
    made["agent"] = client(server, "agent-web1", AGENT_SECRET)
    made["reader-logs"] = client(server, "reader-logs", "s-reader-logs")
    made["cleaner"] = client(server, "cleaner-web1", "s-cleaner")
    made["archiver"] = client(server, "archiver", "s-archiver")
    return made


def denied(call: Callable[[], object]) -> ClientError:
    with pytest.raises(ClientError) as info:
        call()
    response = info.value.response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403, response
    assert response["Error"]["Code"] in ("AccessDenied", "403"), response  # HEAD answers have no body
    return info.value


# --- the permission matrix ---------------------------------------------------------

EXISTING = b"existing\n"
PART = b"one small last part\n"


def snapshot(root, bucket: str) -> dict[str, object]:
    """Everything the matrix operations could change, as the root key sees it: objects and uploads."""
    state: dict[str, object] = {}
    for name in (bucket, f"{bucket}-new", f"{bucket}-empty"):
        try:
            keys = [o["Key"] for o in root.list_objects_v2(Bucket=name).get("Contents", [])]
        except ClientError:
            state[name] = None
            continue
        state[name] = {k: root.get_object(Bucket=name, Key=k)["Body"].read() for k in keys}
    uploads = root.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    state["uploads"] = {
        (u["Key"], u["UploadId"]): [
            (p["PartNumber"], p["ETag"])
            for p in root.list_parts(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
        ]
        for u in uploads
    }
    return state


@dataclass(frozen=True)
class Op:
    """One matrix operation: ``call(s3, bucket, **setup(root, bucket))``, and whether it changes anything."""

    call: Callable[..., object]
    mutates: bool
    setup: Callable[[Any, str], dict[str, Any]] | None = None


def upload_on(key: str, *, with_part: bool = False) -> Callable[[Any, str], dict[str, Any]]:
    """Setup: the root key starts a multipart upload on ``key`` (and sends one part)."""

    def setup(root, bucket: str) -> dict[str, Any]:
        upload_id = root.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        if with_part:
            etag = root.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=PART)["ETag"]
            parts.append({"PartNumber": 1, "ETag": etag})
        return {"upload_id": upload_id, "parts": parts}

    return setup


def put_and_nothing(root, bucket: str, key: str) -> dict[str, Any]:
    """Setup: the root key writes ``key`` (the operation's destination exists); no arguments for the call."""
    root.put_object(Bucket=bucket, Key=key, Body=b"there before\n")
    return {}


def complete(key: str) -> Callable[..., object]:
    return lambda s3, b, upload_id, parts: s3.complete_multipart_upload(
        Bucket=b, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )


OPERATIONS: dict[str, Op] = {
    "ListBuckets": Op(lambda s3, b: s3.list_buckets(), False),
    "CreateBucket": Op(lambda s3, b: s3.create_bucket(Bucket=f"{b}-new"), True),
    "DeleteBucket": Op(lambda s3, b: s3.delete_bucket(Bucket=f"{b}-empty"), True),
    "HeadBucket": Op(lambda s3, b: s3.head_bucket(Bucket=b), False),
    "ListObjectsV2": Op(lambda s3, b: s3.list_objects_v2(Bucket=b), False),
    "PutObject-new": Op(lambda s3, b: s3.put_object(Bucket=b, Key="new.log", Body=b"new\n"), True),
    "PutObject-existing": Op(lambda s3, b: s3.put_object(Bucket=b, Key="existing.log", Body=b"rewritten\n"), True),
    "append": Op(
        lambda s3, b: s3.put_object(Bucket=b, Key="existing.log", Body=b"more\n", WriteOffsetBytes=len(EXISTING)), True
    ),
    "GetObject": Op(lambda s3, b: s3.get_object(Bucket=b, Key="existing.log")["Body"].read(), False),
    "HeadObject": Op(lambda s3, b: s3.head_object(Bucket=b, Key="existing.log"), False),
    "DeleteObject": Op(lambda s3, b: s3.delete_object(Bucket=b, Key="existing.log"), True),
    "CreateSession": Op(lambda s3, b: s3.create_session(Bucket=b), False),
    "CreateMultipartUpload": Op(lambda s3, b: s3.create_multipart_upload(Bucket=b, Key="new.log"), True),
    "UploadPart": Op(
        lambda s3, b, upload_id, parts: s3.upload_part(
            Bucket=b, Key="new.log", UploadId=upload_id, PartNumber=1, Body=PART
        ), True, upload_on("new.log"),
    ),  # fmt: skip
    "ListParts": Op(
        lambda s3, b, upload_id, parts: s3.list_parts(Bucket=b, Key="new.log", UploadId=upload_id), False,
        upload_on("new.log", with_part=True),
    ),  # fmt: skip
    "AbortMultipartUpload": Op(
        lambda s3, b, upload_id, parts: s3.abort_multipart_upload(Bucket=b, Key="new.log", UploadId=upload_id), True,
        upload_on("new.log"),
    ),  # fmt: skip
    "ListMultipartUploads": Op(lambda s3, b, **_: s3.list_multipart_uploads(Bucket=b), False, upload_on("new.log")),
    "CompleteMultipartUpload-new": Op(complete("new.log"), True, upload_on("new.log", with_part=True)),
    "CompleteMultipartUpload-existing": Op(complete("existing.log"), True, upload_on("existing.log", with_part=True)),
    "UploadPartCopy": Op(
        lambda s3, b, upload_id, parts: s3.upload_part_copy(
            Bucket=b, Key="new.log", UploadId=upload_id, PartNumber=1, CopySource={"Bucket": b, "Key": "existing.log"}
        ), True, upload_on("new.log"),
    ),  # fmt: skip
    "CopyObject-new": Op(
        lambda s3, b: s3.copy_object(Bucket=b, Key="copy.log", CopySource={"Bucket": b, "Key": "existing.log"}), True
    ),
    "CopyObject-existing": Op(
        lambda s3, b: s3.copy_object(Bucket=b, Key="target.log", CopySource={"Bucket": b, "Key": "existing.log"}),
        True, lambda root, b: put_and_nothing(root, b, "target.log"),
    ),  # fmt: skip
    "DeleteObjects": Op(lambda s3, b: s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "existing.log"}]}), True),
    "ListObjectVersions": Op(lambda s3, b: s3.list_object_versions(Bucket=b), False),
    "GetBucketVersioning": Op(lambda s3, b: s3.get_bucket_versioning(Bucket=b), False),
    "GetBucketAcl": Op(lambda s3, b: s3.get_bucket_acl(Bucket=b), False),
    "GetObjectAcl": Op(lambda s3, b: s3.get_object_acl(Bucket=b, Key="existing.log"), False),
    "GetObjectTagging": Op(lambda s3, b: s3.get_object_tagging(Bucket=b, Key="existing.log"), False),
    "DeleteBucketPolicy": Op(lambda s3, b: s3.delete_bucket_policy(Bucket=b), False),
}
# Written out from the README's table, independently of server/policy.py.
EVERYONE, CREATORS, WRITERS, ADMINS = set(ROLES), {"append", "write", "admin"}, {"write", "admin"}, {"admin"}
ALLOWED = {
    "ListBuckets": EVERYONE,
    "CreateBucket": ADMINS,
    "DeleteBucket": ADMINS,
    "HeadBucket": EVERYONE,
    "ListObjectsV2": EVERYONE,
    "PutObject-new": CREATORS,
    "PutObject-existing": WRITERS,
    "append": CREATORS,
    "GetObject": EVERYONE,
    "HeadObject": EVERYONE,
    "DeleteObject": WRITERS,
    "CreateSession": EVERYONE,
    "CreateMultipartUpload": CREATORS,
    "UploadPart": CREATORS,
    "ListParts": EVERYONE,
    "AbortMultipartUpload": CREATORS,
    "ListMultipartUploads": EVERYONE,
    "CompleteMultipartUpload-new": CREATORS,
    "CompleteMultipartUpload-existing": WRITERS,
    "UploadPartCopy": CREATORS,
    "CopyObject-new": CREATORS,
    "CopyObject-existing": WRITERS,
    "DeleteObjects": WRITERS,
    "ListObjectVersions": EVERYONE,
    "GetBucketVersioning": EVERYONE,
    "GetBucketAcl": EVERYONE,
    "GetObjectAcl": EVERYONE,
    "GetObjectTagging": EVERYONE,
    "DeleteBucketPolicy": ADMINS,
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("role", ROLES)
def test_permission_matrix(clients, role: str, operation: str) -> None:
    root = clients["root"]
    bucket = f"m-{role}-{operation}".lower()
    root.create_bucket(Bucket=bucket)
    if operation == "DeleteBucket":
        root.create_bucket(Bucket=f"{bucket}-empty")
    root.put_object(Bucket=bucket, Key="existing.log", Body=EXISTING)
    op = OPERATIONS[operation]
    prepared = op.setup(root, bucket) if op.setup else {}
    before = snapshot(root, bucket)
    if role in ALLOWED[operation]:
        op.call(clients[role], bucket, **prepared)
        assert (snapshot(root, bucket) != before) == op.mutates
    else:
        denied(lambda: op.call(clients[role], bucket, **prepared))
        assert snapshot(root, bucket) == before


def test_allowed_writes_have_their_effect(clients) -> None:
    """The matrix checks that something changed; here, that it is the right thing."""
    root, appender = clients["root"], clients["append"]
    root.create_bucket(Bucket="effects")
    appender.put_object(Bucket="effects", Key="a.log", Body=b"one\n")
    appender.put_object(Bucket="effects", Key="a.log", Body=b"two\n", WriteOffsetBytes=4)
    assert root.get_object(Bucket="effects", Key="a.log")["Body"].read() == b"one\ntwo\n"
    clients["write"].put_object(Bucket="effects", Key="a.log", Body=b"three\n")
    assert root.get_object(Bucket="effects", Key="a.log")["Body"].read() == b"three\n"


# --- scopes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logs(clients):
    root = clients["root"]
    for name in ("logs", "other"):
        root.create_bucket(Bucket=name)
    root.put_object(Bucket="logs", Key="web2/app.log", Body=b"web2's line\n")
    root.put_object(Bucket="other", Key="web1/app.log", Body=b"not in logs\n")
    return root


def test_an_append_key_is_confined_to_its_prefix(clients, logs) -> None:
    agent = clients["agent"]
    agent.put_object(Bucket="logs", Key="web1/app.log", Body=b"a\n")
    agent.put_object(Bucket="logs", Key="web1/app.log", Body=b"b\n", WriteOffsetBytes=2)
    assert agent.head_object(Bucket="logs", Key="web1/app.log")["ContentLength"] == 4
    assert agent.get_object(Bucket="logs", Key="web1/app.log")["Body"].read() == b"a\nb\n"
    listed = agent.list_objects_v2(Bucket="logs", Prefix="web1/")
    assert [o["Key"] for o in listed["Contents"]] == ["web1/app.log"]

    denied(lambda: agent.put_object(Bucket="logs", Key="web1/app.log", Body=b"rewritten\n"))
    denied(lambda: agent.delete_object(Bucket="logs", Key="web1/app.log"))
    denied(lambda: agent.put_object(Bucket="logs", Key="web2/new.log", Body=b"x\n"))
    denied(lambda: agent.put_object(Bucket="logs", Key="web2/app.log", Body=b"x\n", WriteOffsetBytes=12))
    denied(lambda: agent.get_object(Bucket="logs", Key="web2/app.log"))
    denied(lambda: agent.head_object(Bucket="logs", Key="web2/app.log"))
    denied(lambda: agent.put_object(Bucket="other", Key="web1/new.log", Body=b"x\n"))
    denied(lambda: agent.list_objects_v2(Bucket="logs"))
    denied(lambda: agent.list_objects_v2(Bucket="logs", Prefix="web"))
    assert logs.get_object(Bucket="logs", Key="web1/app.log")["Body"].read() == b"a\nb\n"
    assert logs.get_object(Bucket="logs", Key="web2/app.log")["Body"].read() == b"web2's line\n"
    assert "Contents" not in logs.list_objects_v2(Bucket="logs", Prefix="web2/new")
    assert "Contents" not in logs.list_objects_v2(Bucket="other", Prefix="web1/new")


def test_list_buckets_shows_only_granted_buckets(clients, logs) -> None:
    assert [b["Name"] for b in clients["agent"].list_buckets()["Buckets"]] == ["logs"]
    assert [b["Name"] for b in clients["reader-logs"].list_buckets()["Buckets"]] == ["logs"]
    assert {"logs", "other"} <= {b["Name"] for b in clients["read"].list_buckets()["Buckets"]}


def test_a_bucket_scoped_reader_reads_only_its_bucket(clients, logs) -> None:
    reader = clients["reader-logs"]
    assert reader.get_object(Bucket="logs", Key="web2/app.log")["Body"].read() == b"web2's line\n"
    assert len(reader.list_objects_v2(Bucket="logs")["Contents"]) >= 1
    denied(lambda: reader.get_object(Bucket="other", Key="web1/app.log"))
    denied(lambda: reader.head_bucket(Bucket="other"))
    denied(lambda: reader.put_object(Bucket="logs", Key="web3/x.log", Body=b"x"))


def test_env_secret_is_the_only_secret_that_works(server, logs) -> None:
    """``secret_key: ${AGENT_SECRET}`` took the server's environment value, not the literal text."""
    for secret in ("${AGENT_SECRET}", "wrong"):
        with pytest.raises(ClientError) as info:
            client(server, "agent-web1", secret).head_bucket(Bucket="logs")
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_concurrent_plain_puts_by_an_append_key_create_once(server, logs) -> None:
    """The 'does it exist' check runs under the object's lock: of N racing creates one wins,
    the others would overwrite it and are refused; the object holds the winner's bytes."""
    auth = SigV4Auth("agent-web1", AGENT_SECRET, REGION)
    results: dict[int, int] = {}
    async with httpx.AsyncClient(base_url=server.url, auth=auth, timeout=30) as http:

        async def put(i: int) -> None:
            results[i] = (await http.put("/logs/web1/race.log", content=f"writer {i}\n".encode())).status_code

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(put, i)
    winners = [i for i, status in results.items() if status == 200]
    assert len(winners) == 1 and sorted(results.values()) == [200] + [403] * 7
    assert logs.get_object(Bucket="logs", Key="web1/race.log")["Body"].read() == f"writer {winners[0]}\n".encode()


def complete_body(parts: list[dict]) -> bytes:
    rows = "".join(f"<Part><PartNumber>{p['PartNumber']}</PartNumber><ETag>{p['ETag']}</ETag></Part>" for p in parts)
    return f"<CompleteMultipartUpload>{rows}</CompleteMultipartUpload>".encode()


def test_an_offset_header_does_not_turn_a_replacing_write_into_an_append(server, clients, logs) -> None:
    """Only PutObject appends: with ``x-amz-write-offset-bytes`` an append key's Complete or CopyObject
    still replaces, so over an existing object it is refused and the object keeps its bytes."""
    root = clients["root"]
    root.put_object(Bucket="logs", Key="web1/shipped.log", Body=b"shipped\n")
    setup = upload_on("web1/shipped.log", with_part=True)(clients["agent"], "logs")
    offset = {"x-amz-write-offset-bytes": "8"}
    with httpx.Client(base_url=server.url, auth=SigV4Auth("agent-web1", AGENT_SECRET, REGION), timeout=30) as http:
        completed = http.post(
            "/logs/web1/shipped.log", params={"uploadId": setup["upload_id"]}, content=complete_body(setup["parts"]),
            headers=offset,
        )  # fmt: skip
        copied = http.put(
            "/logs/web1/shipped.log",
            headers={**offset, "x-amz-copy-source": "/logs/web1/shipped.log", "x-amz-metadata-directive": "REPLACE"},
        )  # fmt: skip
    for answer in (completed, copied):
        assert answer.status_code == 403, answer.text
        assert b"<Code>AccessDenied</Code>" in answer.content
    assert root.get_object(Bucket="logs", Key="web1/shipped.log")["Body"].read() == b"shipped\n"


def test_a_copy_reads_its_source_and_creates_its_destination_within_the_grants(clients, logs) -> None:
    agent, archiver = clients["agent"], clients["archiver"]
    logs.put_object(Bucket="logs", Key="web1/source.log", Body=b"mine\n")
    logs.put_object(Bucket="other", Key="archive-me.log", Body=b"old\n")

    def copy(s3, source: str, key: str, bucket: str = "logs") -> object:
        src_bucket, _, src_key = source.partition("/")
        return s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": src_bucket, "Key": src_key})

    copy(agent, "logs/web1/source.log", "web1/copied.log")
    copy(archiver, "other/archive-me.log", "archive/old.log")  # read on the source bucket, append on the destination
    denied(lambda: copy(agent, "logs/web2/app.log", "web1/stolen.log"))  # source outside the prefix
    denied(lambda: copy(agent, "other/web1/app.log", "web1/stolen.log"))  # no grant on the source bucket
    denied(lambda: copy(agent, "logs/web1/source.log", "web2/copied.log"))  # destination outside the prefix
    denied(lambda: copy(agent, "logs/web2/app.log", "web1/copied.log"))  # and it exists: no overwrite either
    denied(lambda: copy(archiver, "logs/web2/app.log", "archive/web2.log"))  # archiver may not read logs
    denied(lambda: copy(archiver, "other/archive-me.log", "archive/old.log"))  # exists now: append may not replace

    upload_id = agent.create_multipart_upload(Bucket="logs", Key="web1/parts.log")["UploadId"]
    part = {"Bucket": "logs", "Key": "web1/parts.log", "UploadId": upload_id, "PartNumber": 1}
    denied(lambda: agent.upload_part_copy(**part, CopySource={"Bucket": "logs", "Key": "web2/app.log"}))
    denied(lambda: agent.upload_part_copy(**part, CopySource={"Bucket": "other", "Key": "web1/app.log"}))
    assert "Parts" not in logs.list_parts(Bucket="logs", Key="web1/parts.log", UploadId=upload_id)
    agent.upload_part_copy(**part, CopySource={"Bucket": "logs", "Key": "web1/source.log"})
    agent.complete_multipart_upload(
        Bucket="logs", Key="web1/parts.log", UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": logs.list_parts(
            Bucket="logs", Key="web1/parts.log", UploadId=upload_id)["Parts"][0]["ETag"]}]},
    )  # fmt: skip

    def read(bucket: str, key: str) -> bytes:
        return logs.get_object(Bucket=bucket, Key=key)["Body"].read()

    assert read("logs", "web1/copied.log") == read("logs", "web1/parts.log") == b"mine\n"
    assert read("logs", "archive/old.log") == b"old\n"
    listed = {o["Key"] for o in logs.list_objects_v2(Bucket="logs").get("Contents", [])}
    assert not {"web1/stolen.log", "web2/copied.log", "archive/web2.log"} & listed


def test_delete_objects_refuses_each_key_out_of_scope_and_deletes_the_others(clients, logs) -> None:
    logs.put_object(Bucket="logs", Key="web1/old.log", Body=b"old\n")
    answer = clients["cleaner"].delete_objects(Bucket="logs", Delete={"Objects": [
        {"Key": "web1/old.log"}, {"Key": "web2/app.log"}, {"Key": "web1/never-was.log"},
    ]})  # fmt: skip
    assert sorted(d["Key"] for d in answer["Deleted"]) == ["web1/never-was.log", "web1/old.log"]
    assert [(e["Key"], e["Code"]) for e in answer["Errors"]] == [("web2/app.log", "AccessDenied")]
    assert logs.get_object(Bucket="logs", Key="web2/app.log")["Body"].read() == b"web2's line\n"
    assert "Contents" not in logs.list_objects_v2(Bucket="logs", Prefix="web1/old.log")
    # without a write grant on the bucket the whole request is refused
    denied(lambda: clients["agent"].delete_objects(Bucket="logs", Delete={"Objects": [{"Key": "web1/source.log"}]}))


def test_aws_cli_rm_recursive_with_a_prefix_scoped_write_key(server, clients, logs) -> None:
    """``aws s3 rm --recursive`` lists under the prefix, then DeleteObjects: both within the grant."""
    for key in ("web1/tmp/a.log", "web1/tmp/deeper/b.log"):
        logs.put_object(Bucket="logs", Key=key, Body=b"x\n")
    env = client_env(AWS_ACCESS_KEY_ID="cleaner-web1", AWS_SECRET_ACCESS_KEY="s-cleaner")
    run = subprocess.run(
        [AWS, "--endpoint-url", server.url, "s3", "rm", "--recursive", "s3://logs/web1/tmp/"],
        env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr.decode()
    assert "Contents" not in logs.list_objects_v2(Bucket="logs", Prefix="web1/tmp/")
    assert logs.get_object(Bucket="logs", Key="web2/app.log")["Body"].read() == b"web2's line\n"


# --- sessions (CreateSession) ---------------------------------------------------------


def open_session(server: ServerProcess, access_key: str, secret: str, bucket: str, mode: str = "ReadWrite") -> httpx.Client:
    with httpx.Client(base_url=server.url, auth=SigV4Auth(access_key, secret, REGION)) as http:
        answer = http.get(f"/{bucket}?session", headers={"x-amz-create-session-mode": mode})
    assert answer.status_code == 200, answer.text
    grant = parse_create_session(answer.content, answer.headers)
    auth = SigV4Auth(
        grant.access_key_id, grant.secret_access_key, REGION, service="s3express",
        session_token=grant.session_token, session_token_header="x-amz-s3session-token",
    )  # fmt: skip
    return httpx.Client(base_url=server.url, auth=auth, timeout=30)


def test_a_session_inherits_its_creators_grants(server, logs) -> None:
    with open_session(server, "agent-web1", AGENT_SECRET, "logs") as session:
        assert session.put("/logs/web1/session.log", content=b"1\n").status_code == 200
        assert session.put("/logs/web1/session.log", content=b"2\n", headers={"x-amz-write-offset-bytes": "2"}).status_code == 200
        assert session.put("/logs/web1/session.log", content=b"over\n").status_code == 403
        assert session.put("/logs/web2/session.log", content=b"x\n").status_code == 403
        assert session.delete("/logs/web1/session.log").status_code == 403
    assert logs.get_object(Bucket="logs", Key="web1/session.log")["Body"].read() == b"1\n2\n"


def test_a_read_only_session_only_reads_and_only_its_bucket(server, logs) -> None:
    with open_session(server, "k-write", "s-write", "logs", mode="ReadOnly") as session:
        assert session.get("/logs/web2/app.log").content == b"web2's line\n"
        assert session.put("/logs/web2/app.log", content=b"x\n").status_code == 403
        assert session.delete("/logs/web2/app.log").status_code == 403
    with open_session(server, "k-write", "s-write", "logs") as session:
        assert session.get("/other/web1/app.log").status_code == 403
        assert session.put("/other/web1/app.log", content=b"x\n").status_code == 403
    assert logs.get_object(Bucket="logs", Key="web2/app.log")["Body"].read() == b"web2's line\n"
    assert logs.get_object(Bucket="other", Key="web1/app.log")["Body"].read() == b"not in logs\n"


# --- the pure policy and the config ----------------------------------------------------


def test_policy_listing_prefix_and_unknown_operations() -> None:
    agent = Principal("a", (Grant(Role.APPEND, "logs", "web1/"),))
    authorize(agent, "ListObjectsV2", "logs", "web1/2024", appending=False)
    with pytest.raises(AccessDenied):
        authorize(agent, "ListObjectsV2", "logs", "", appending=False)
    with pytest.raises(AccessDenied):
        authorize(Principal("w", (Grant(Role.WRITE),)), "PutBucketPolicy", "logs", None)
    authorize(Principal("r", (Grant(Role.ADMIN),)), "PutBucketPolicy", "logs", None)


@pytest.mark.parametrize(
    "exists, appending, allowed",
    [(None, False, True), (False, False, True), (True, False, False), (True, True, True)],
)
def test_policy_append_key_never_overwrites(exists, appending, allowed) -> None:
    agent = Principal("a", (Grant(Role.APPEND, "logs"),))
    if allowed:
        authorize(agent, "PutObject", "logs", "k", appending=appending, object_exists=exists)
    else:
        with pytest.raises(AccessDenied, match="not overwrite"):
            authorize(agent, "PutObject", "logs", "k", appending=appending, object_exists=exists)


@pytest.mark.parametrize("exists", [None, False, True])
def test_policy_append_key_never_completes_a_multipart_upload_over_an_object(exists) -> None:
    agent = Principal("a", (Grant(Role.APPEND, "logs"),))
    if exists:
        with pytest.raises(AccessDenied, match="not overwrite"):
            authorize(agent, "CompleteMultipartUpload", "logs", "k", object_exists=exists)
    else:
        authorize(agent, "CompleteMultipartUpload", "logs", "k", object_exists=exists)


@pytest.mark.parametrize("table, key", [(subresources.BUCKET, None), (subresources.OBJECT, "web1/k")])
def test_policy_every_sub_resource_get_is_a_read_and_setting_one_is_admins(table, key) -> None:
    """Every name the router gives a sub-resource GET has a rule (a new sub-resource cannot fall to admin-only)."""
    reader = Principal("r", (Grant(Role.READ, "logs", "web1/"),))
    writer = Principal("w", (Grant(Role.WRITE, "logs"),))
    for name in table:
        _, reading = subresources.route("GET", "logs", key, {name: ""})
        authorize(reader, reading, "logs", key)
        with pytest.raises(AccessDenied):
            authorize(reader, reading, "other", key)
        for method in ("PUT", "DELETE"):
            found = subresources.route(method, "logs", key, {name: ""})
            if found is not None:
                with pytest.raises(AccessDenied):
                    authorize(writer, found[1], "logs", key)
    if key is not None:
        with pytest.raises(AccessDenied):
            authorize(reader, "GetObjectAcl", "logs", "web2/k")


def test_policy_only_a_put_object_appends() -> None:
    agent = Principal("a", (Grant(Role.APPEND, "logs"),))
    authorize(agent, "PutObject", "logs", "k", appending=True, object_exists=True)
    for operation in ("CopyObject", "CompleteMultipartUpload"):
        with pytest.raises(AccessDenied, match="not overwrite"):
            authorize(agent, operation, "logs", "k", appending=True, object_exists=True)


def test_policy_copy_sources_and_batch_keys_have_rules_of_their_own() -> None:
    from server.policy import EACH_KEY, REPLACING_WRITES, SOURCE_READS

    assert SOURCE_READS == {"CopyObject": "GetObject", "UploadPartCopy": "GetObject"}
    assert EACH_KEY == {"DeleteObjects": "DeleteObject"}
    assert REPLACING_WRITES == {"PutObject", "CopyObject", "CompleteMultipartUpload"}
    cleaner = Principal("c", (Grant(Role.WRITE, "logs", "web1/"),))
    authorize(cleaner, "DeleteObjects", "logs", None)  # the request: a write grant on the bucket
    with pytest.raises(AccessDenied):
        authorize(Principal("a", (Grant(Role.APPEND, "logs"),)), "DeleteObjects", "logs", None)


def test_session_grants_are_narrowed() -> None:
    owner = Principal("o", (Grant(Role.WRITE), Grant(Role.APPEND, "other", "p/"), Grant(Role.METRICS)))
    session = session_principal(owner, "s", "logs", read_only=True)
    assert session.grants == (Grant(Role.READ, "logs"),)
    assert session_principal(owner, "s", "other", read_only=False).grants == (
        Grant(Role.WRITE, "other"), Grant(Role.APPEND, "other", "p/"),
    )  # fmt: skip


@pytest.mark.parametrize(
    "keys, message",
    [
        ("- {access_key: a, secret_key: s, grants: [{role: owner}]}", "keys[0].grants[0].role: must be one of"),
        ("- {access_key: a, secret_key: s, grants: [{role: read, prefix: p/}]}", "keys[0].grants[0].prefix: a prefix needs a bucket"),
        ("- {access_key: a, secret_key: s, grants: [{role: admin, bucket: b, prefix: p/}]}", "keys[0].grants[0].prefix: admin"),
        ("- {access_key: a, secret_key: s, grants: [{role: read, bucket: b, colour: red}]}", "keys[0].grants[0].colour: unknown key"),
        ("- {access_key: a, secret_key: s, grants: []}", "keys[0].grants: a key needs at least one grant"),
        ("- {access_key: a, grants: [{role: read}]}", "keys[0].secret_key: required"),
        ("- {access_key: a, secret_key: '${UNSET_SECRET}', grants: [{role: read}]}", "keys[0].secret_key: environment variable UNSET_SECRET"),
        ("- {access_key: a, secret_key: s, grants: [{role: read}]}\n- {access_key: a, secret_key: t, grants: [{role: read}]}",
         "keys[1].access_key: 'a' is configured twice"),
        ("- {access_key: a, secret_key: s, grants: [{role: metrics, bucket: b}]}", "keys[0].grants[0]: a metrics grant"),
    ],
)
def test_bad_keys_config_names_the_yaml_path(keys: str, message: str) -> None:
    import yaml

    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_load(textwrap.dedent(f"keys:\n{textwrap.indent(keys, '  ')}")), {})
    assert message in str(info.value)


def test_a_configured_key_may_not_reuse_the_root_key(make_server, tmp_path) -> None:
    from server.cli import build_keyring
    from server.config import Credentials

    config = parse_config({"keys": [{"access_key": "root", "secret_key": "x", "grants": [{"role": "read"}]}]}, {})
    with pytest.raises(ConfigError, match=r"keys\[0\].access_key: 'root' is the root access key"):
        build_keyring(config, Credentials("root", "secret"))
