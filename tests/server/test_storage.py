"""Storage: the rows of the append contract it owns, keys, listing, races, ETag/CRC rules."""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from pathlib import Path

import pytest
import trio

from server.errors import (
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    EntityTooLarge,
    InvalidArgument,
    InvalidRequest,
    NoSuchBucket,
    NoSuchKey,
)
from server.commit_process import HAND_OVER_AT
from server.datafiles import write_all_at
from server.index import prefix_upper_bound
from server.records import BodyDigest, MiB, append_etag
from server.storage import NewObject, ObjectInfo, Storage, open_storage


async def body(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def failing_body(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise ConnectionResetError("client went away")


async def gated_body(first: bytes, rest: bytes, started: trio.Event, gate: trio.Event) -> AsyncIterator[bytes]:
    """Yields ``first``; once storage asks for more (so holds the lock), waits for ``gate``."""
    yield first
    started.set()
    await gate.wait()
    yield rest


async def content(storage: Storage, key: str, bucket: str = "b") -> bytes:
    async with storage.open_reader(bucket, key) as reader:
        return b"".join([chunk async for chunk in reader.stream()])


def data_files(data_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (data_dir / "objects").glob("*/*")}


@pytest.fixture(params=[(True, True), (True, False), (False, False)], ids=["fsync", "fsync-threads", "nofsync"])
async def storage(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    """The committer's three pipelines: small appends through the commit process,
    or its threads (also what follows the process's end), and without flushes."""
    fsync, commit_process = request.param
    async with open_storage(tmp_path / "data", fsync=fsync, commit_process=commit_process) as opened:
        await opened.create_bucket("b")
        yield opened


async def put(storage: Storage, key: str, data: bytes, offset: int | None = 0) -> ObjectInfo:
    return await storage.write_object("b", key, body(data), offset=offset)


# -- the append contract ---------------------------------------------------------


async def test_create_at_zero_then_append(storage: Storage) -> None:
    created = await put(storage, "log", b"hello ")
    assert (created.size, created.appends) == (6, 1)
    assert created.etag == hashlib.md5(b"hello ").hexdigest()
    assert created.crc32 == zlib.crc32(b"hello ")

    appended = await put(storage, "log", b"world", offset=6)
    assert (appended.size, appended.appends) == (11, 2)
    world = BodyDigest(size=5, md5=None, crc32=zlib.crc32(b"world"))
    assert appended.etag == append_etag(created.etag, world, 2)
    assert appended.etag.endswith("-2") and appended.etag != created.etag
    assert appended.crc32 == zlib.crc32(b"hello world")
    assert await content(storage, "log") == b"hello world"
    assert await storage.head_object("b", "log") == appended


async def test_etag_and_crc_rules_over_many_appends(storage: Storage) -> None:
    parts = [os.urandom(n) for n in (1, 100, 4096, 70_000, 3)]
    info = await put(storage, "k", parts[0])
    expected_etag = hashlib.md5(parts[0]).hexdigest()
    for n, part in enumerate(parts[1:], start=2):
        info = await put(storage, "k", part, offset=info.size)
        body_id = len(part).to_bytes(8, "big") + zlib.crc32(part).to_bytes(4, "big")
        expected_etag = hashlib.md5(bytes.fromhex(expected_etag.split("-")[0]) + body_id).hexdigest() + f"-{n}"
        assert info.etag == expected_etag
    whole = b"".join(parts)
    assert (info.size, info.crc32, info.appends) == (len(whole), zlib.crc32(whole), len(parts))
    assert await content(storage, "k") == whole


@pytest.mark.parametrize("offset", [2, 4, 100])
async def test_offset_mismatch_names_both_numbers_and_changes_nothing(storage: Storage, offset: int) -> None:
    before = await put(storage, "k", b"abc")
    with pytest.raises(InvalidArgument) as caught:
        await put(storage, "k", b"zzz", offset=offset)
    assert caught.value.message == f"The write offset {offset} does not match the object size 3"
    assert await storage.head_object("b", "k") == before
    assert await content(storage, "k") == b"abc"


async def test_offset_zero_on_existing_object_is_a_mismatch(storage: Storage) -> None:
    await put(storage, "k", b"abc")
    with pytest.raises(InvalidArgument, match="The write offset 0 does not match the object size 3"):
        await put(storage, "k", b"x", offset=0)


async def test_missing_object_with_offset_is_no_such_key(storage: Storage) -> None:
    with pytest.raises(NoSuchKey):
        await put(storage, "nope", b"abc", offset=5)
    with pytest.raises(NoSuchKey):
        await storage.head_object("b", "nope")
    assert data_files(storage.data_dir) == {}


async def test_empty_append_is_a_no_op(storage: Storage) -> None:
    before = await put(storage, "k", b"abc")
    after = await put(storage, "k", b"", offset=3)
    assert after == before  # same ETag, same last_modified, same count
    assert await storage.head_object("b", "k") == before


async def test_empty_create_makes_an_empty_object(storage: Storage) -> None:
    info = await put(storage, "empty", b"")
    assert (info.size, info.etag, info.crc32) == (0, hashlib.md5(b"").hexdigest(), 0)
    assert await content(storage, "empty") == b""
    assert (await put(storage, "empty", b"x", offset=0)).size == 1


async def test_plain_put_replaces_and_resets(storage: Storage) -> None:
    await storage.write_object("b", "k", body(b"old"), offset=0, new=NewObject(metadata={"a": "1"}))
    await put(storage, "k", b"er", offset=3)
    old_files = set(data_files(storage.data_dir))
    new = NewObject(content_type="text/plain", metadata={"b": "2"}, system={"x-amz-server-side-encryption": "AES256"})
    info = await storage.write_object("b", "k", body(b"new"), offset=None, new=new)
    assert (info.size, info.appends, info.etag) == (3, 1, hashlib.md5(b"new").hexdigest())
    assert (info.content_type, info.metadata, info.system) == ("text/plain", {"b": "2"}, new.system)
    assert await content(storage, "k") == b"new"
    assert set(data_files(storage.data_dir)).isdisjoint(old_files)  # the old version's file is gone
    assert len(data_files(storage.data_dir)) == 1


async def test_append_keeps_the_metadata_of_the_first_write(storage: Storage) -> None:
    first = NewObject(content_type="text/plain", metadata={"owner": "me"})
    await storage.write_object("b", "k", body(b"a"), offset=0, new=first)
    info = await storage.write_object("b", "k", body(b"b"), offset=1, new=NewObject(metadata={"other": "x"}))
    assert (info.content_type, info.metadata) == ("text/plain", {"owner": "me"})


async def test_delete_then_append_at_zero_starts_again(storage: Storage) -> None:
    await put(storage, "k", b"abc")
    await storage.delete_object("b", "k")
    await storage.delete_object("b", "k")  # a missing key is fine
    with pytest.raises(NoSuchKey):
        await storage.head_object("b", "k")
    assert data_files(storage.data_dir) == {}
    with pytest.raises(NoSuchKey):
        await put(storage, "k", b"x", offset=3)
    info = await put(storage, "k", b"xyz")
    assert (info.size, info.appends) == (3, 1)
    assert await content(storage, "k") == b"xyz"


async def test_check_existing_refuses_before_reading_the_body(storage: Storage) -> None:
    before = await put(storage, "k", b"abc")
    seen: list[ObjectInfo | None] = []

    def refuse(existing: ObjectInfo | None) -> None:
        seen.append(existing)
        raise InvalidRequest("no")

    async def untouchable() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    with pytest.raises(InvalidRequest):
        await storage.write_object("b", "k", untouchable(), offset=3, check_existing=refuse)
    with pytest.raises(InvalidRequest):
        await storage.write_object("b", "new", untouchable(), offset=None, check_existing=refuse)
    assert seen == [before, None]
    assert await storage.head_object("b", "k") == before


@pytest.mark.parametrize("size", [10, 3 * MiB + 5])  # in memory, and spilled to the data file
async def test_check_body_refusal_leaves_no_trace(storage: Storage, size: int) -> None:
    before = await put(storage, "k", b"abc")
    files_before = data_files(storage.data_dir)
    data = os.urandom(size)
    digests = []

    def refuse(digest) -> None:
        digests.append(digest)
        raise InvalidRequest("bad checksum")

    chunks = [data[i : i + 64 * 1024] for i in range(0, size, 64 * 1024)]
    with pytest.raises(InvalidRequest):
        await storage.write_object("b", "k", body(*chunks), offset=3, check_body=refuse)
    with pytest.raises(InvalidRequest):
        await storage.write_object("b", "fresh", body(*chunks), offset=0, check_body=refuse)
    # an append without a Content-MD5 skips the MD5; a new object always has it (its ETag)
    assert [(d.size, d.md5, d.crc32) for d in digests] == [
        (size, None, zlib.crc32(data)), (size, hashlib.md5(data).digest(), zlib.crc32(data))
    ]
    assert await storage.head_object("b", "k") == before
    assert await content(storage, "k") == b"abc"
    assert data_files(storage.data_dir) == files_before
    with pytest.raises(NoSuchKey):
        await storage.head_object("b", "fresh")


@pytest.mark.parametrize("size", [10, 3 * MiB])
async def test_body_failing_midway_leaves_no_trace(storage: Storage, size: int) -> None:
    before = await put(storage, "k", b"abc")
    files_before = data_files(storage.data_dir)
    chunks = [b"x" * (64 * 1024)] * (size // (64 * 1024)) or [b"x" * size]
    with pytest.raises(ConnectionResetError):
        await storage.write_object("b", "k", failing_body(*chunks), offset=3)
    with pytest.raises(ConnectionResetError):
        await storage.write_object("b", "fresh", failing_body(*chunks), offset=None)
    assert await storage.head_object("b", "k") == before
    assert data_files(storage.data_dir) == files_before
    # The object still takes appends at its committed length.
    assert (await put(storage, "k", b"d", offset=3)).size == 4
    assert await content(storage, "k") == b"abcd"


async def test_body_size_limit(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "data", max_body_size=2 * MiB) as storage:
        await storage.create_bucket("b")
        await put(storage, "k", b"abc")
        exact = await put(storage, "exact", b"e" * (2 * MiB))
        assert exact.size == 2 * MiB
        files_before = data_files(storage.data_dir)
        for key, offset in (("k", 3), ("new", None)):
            async with aclosing(body(*[b"y" * MiB] * 3)) as too_large:  # storage stops reading it half-way
                with pytest.raises(EntityTooLarge):
                    await storage.write_object("b", key, too_large, offset=offset)
        assert await content(storage, "k") == b"abc"
        assert data_files(storage.data_dir) == files_before


async def test_large_body_streams_and_reads_back_in_ranges(storage: Storage) -> None:
    data = os.urandom(5 * MiB + 123)
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    info = await storage.write_object("b", "big", body(*chunks), offset=0)
    assert (info.size, info.etag, info.crc32) == (len(data), hashlib.md5(data).hexdigest(), zlib.crc32(data))
    async with storage.open_reader("b", "big") as reader:
        assert b"".join([c async for c in reader.stream(chunk=MiB)]) == data
        assert b"".join([c async for c in reader.stream(MiB - 1, 2 * MiB + 7, chunk=4096)]) == data[MiB - 1 : 2 * MiB + 7]
        assert [c async for c in reader.stream(len(data))] == []
        with pytest.raises(ValueError):
            [c async for c in reader.stream(10, 5)]


# -- keys and listing ------------------------------------------------------------

AWKWARD_KEYS = ["../etc/passwd", "a//b", "trailing/", "/leading", "日本語/ログ.txt", "x" * 1024, "é" * 512, "..", "."]


async def test_awkward_keys_are_just_keys(storage: Storage) -> None:
    for n, key in enumerate(AWKWARD_KEYS):
        await put(storage, key, f"#{n}".encode())
    for n, key in enumerate(AWKWARD_KEYS):
        assert await content(storage, key) == f"#{n}".encode()
    listed = [info.key for info in await storage.list_objects("b")]
    assert listed == sorted(AWKWARD_KEYS, key=lambda k: k.encode())
    # Data file names never derive from keys: only fan-out dirs and hex ids under objects/.
    for path in (storage.data_dir / "objects").rglob("*"):
        assert all(c in "0123456789abcdef" for c in path.name), path
    assert not (storage.data_dir.parent / "etc").exists()


async def test_listing_is_in_utf8_byte_order(storage: Storage) -> None:
    keys = ["a", "a-b", "a/b", "a0", "b", "\uffff", "\U0001f600", "é", "Z", "a/b/c"]
    for key in keys:
        await put(storage, key, b".")
    listed = [info.key for info in await storage.list_objects("b")]
    assert listed == sorted(keys, key=lambda k: k.encode("utf-8"))
    assert listed.index("\uffff") < listed.index("\U0001f600")  # UTF-16 order would swap these


async def test_listing_prefix_start_after_limit_and_paging(storage: Storage) -> None:
    keys = [f"logs/{host}/{n:03d}" for host in ("a", "b", "c") for n in range(7)] + ["logs0", "logr", "other"]
    for key in keys:
        await put(storage, key, b".")
    ordered = sorted(keys, key=str.encode)

    page = await storage.list_objects("b", prefix="logs/", limit=5)
    assert [i.key for i in page] == [k for k in ordered if k.startswith("logs/")][:5]
    seen, after = [], ""
    while True:
        page = await storage.list_objects("b", prefix="logs/", start_after=after, limit=4)
        if not page:
            break
        seen += [i.key for i in page]
        after = page[-1].key
    assert seen == [k for k in ordered if k.startswith("logs/")]
    # Skip past a common prefix the way a delimiter listing does.
    skipped = await storage.list_objects("b", prefix="logs/", start_after="logs/a/\U0010ffff")
    assert [i.key for i in skipped] == [k for k in ordered if k.startswith("logs/") and not k.startswith("logs/a/")]
    assert [i.key for i in await storage.list_objects("b", start_after="logs0")] == ["other"]
    assert await storage.list_objects("b", prefix="nothing") == []
    assert await storage.list_objects("b", limit=0) == []
    assert [i.key for i in await storage.list_objects("b", prefix="logs/c/", start_after="a")] == [
        f"logs/c/{n:03d}" for n in range(7)
    ]


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("") is None
    assert prefix_upper_bound("abc") == "abd"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff\U0010ffff") is None
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"  # never a surrogate


# -- buckets -----------------------------------------------------------------------


async def test_buckets(storage: Storage) -> None:
    await storage.create_bucket("a-bucket")
    with pytest.raises(BucketAlreadyOwnedByYou):
        await storage.create_bucket("b")
    assert [b.name for b in await storage.list_buckets()] == ["a-bucket", "b"]
    assert (await storage.get_bucket("b")).name == "b"
    await put(storage, "k", b"x")
    with pytest.raises(BucketNotEmpty):
        await storage.delete_bucket("b")
    await storage.delete_object("b", "k")
    await storage.delete_bucket("b")
    for call in (
        storage.get_bucket("b"),
        storage.delete_bucket("b"),
        storage.head_object("b", "k"),
        storage.list_objects("b"),
        storage.delete_object("b", "k"),
        put(storage, "k", b"x"),
    ):
        with pytest.raises(NoSuchBucket):
            await call
    with pytest.raises(NoSuchBucket):
        async with storage.open_reader("b", "k"):
            pass  # pragma: no cover


async def test_state_survives_reopening(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "data") as storage:
        await storage.create_bucket("b")
        await storage.write_object("b", "k", body(b"abc"), offset=0, new=NewObject("text/x", {"m": "é"}, {"s": "1"}))
        info = await storage.write_object("b", "k", body(b"def"), offset=3)
        with pytest.raises(RuntimeError, match="in use"):
            await Storage.open(tmp_path / "data")
    async with open_storage(tmp_path / "data", fsync=False) as storage:
        assert [b.name for b in await storage.list_buckets()] == ["b"]
        assert await storage.head_object("b", "k") == info
        assert await content(storage, "k") == b"abcdef"
        assert await storage.stats() == (1, 6)
        assert (await storage.write_object("b", "k", body(b"g"), offset=6)).size == 7


# -- races ---------------------------------------------------------------------------


async def test_concurrent_creates_at_zero_exactly_one_wins(storage: Storage) -> None:
    results: dict[int, object] = {}

    async def writer(n: int) -> None:
        try:
            results[n] = await put(storage, "race", bytes([65 + n]) * (1000 + n))
        except InvalidArgument as exc:
            results[n] = exc

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(writer, n)
    winners = [n for n, r in results.items() if isinstance(r, ObjectInfo)]
    assert len(winners) == 1
    (winner,) = winners
    assert await content(storage, "race") == bytes([65 + winner]) * (1000 + winner)
    for n, r in results.items():
        if n != winner:
            assert isinstance(r, InvalidArgument) and f"object size {1000 + winner}" in r.message


async def test_concurrent_appends_at_one_offset_exactly_one_wins(storage: Storage) -> None:
    await put(storage, "k", b"head")
    outcomes = []

    async def writer(n: int) -> None:
        try:
            outcomes.append(await put(storage, "k", b"%02d" % n * 50, offset=4))
        except InvalidArgument:
            outcomes.append(None)

    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(writer, n)
    (won,) = [o for o in outcomes if o is not None]
    assert won.size == 104 and outcomes.count(None) == 19
    data = await content(storage, "k")
    assert data[:4] == b"head" and len(set(data[4:].split(data[4:6]))) == 1  # one writer's bytes only


async def test_group_commit_shares_batches(storage: Storage) -> None:
    async def appender(n: int) -> None:
        size = 0
        for _ in range(10):
            size = (await put(storage, f"obj{n}", b"x" * 100, offset=size)).size

    async with trio.open_nursery() as nursery:
        for n in range(16):
            nursery.start_soon(appender, n)
    committer = storage._committer
    assert committer.jobs >= 160 + 1
    assert committer.batches < committer.jobs / 2  # many writes per transaction
    for n in range(16):
        assert await content(storage, f"obj{n}") == b"x" * 1000


async def test_reader_keeps_its_snapshot(storage: Storage) -> None:
    await put(storage, "k", b"first")
    async with storage.open_reader("b", "k") as reader:
        await put(storage, "k", b"-second", offset=5)
        assert reader.info.size == 5
        assert b"".join([c async for c in reader.stream()]) == b"first"
        await storage.write_object("b", "k", body(b"replaced"), offset=None)
        await storage.delete_object("b", "k")
        assert b"".join([c async for c in reader.stream(1, 4)]) == b"irs"
    with pytest.raises(NoSuchKey):
        async with storage.open_reader("b", "k"):
            pass  # pragma: no cover


async def test_put_during_append_is_serialised(storage: Storage) -> None:
    await put(storage, "k", b"abc")
    started, gate = trio.Event(), trio.Event()
    done: list[str] = []

    async def appender() -> None:
        await storage.write_object("b", "k", gated_body(b"d", b"e", started, gate), offset=3)
        done.append("append")

    async def replacer() -> None:
        await storage.write_object("b", "k", body(b"NEW"), offset=None)
        done.append("put")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(appender)
        with trio.fail_after(5):
            await started.wait()
        nursery.start_soon(replacer)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # the PUT waits for the append's lock
        gate.set()
    assert done == ["append", "put"]
    assert await content(storage, "k") == b"NEW"
    assert len(data_files(storage.data_dir)) == 1


async def test_delete_during_append_is_serialised(storage: Storage) -> None:
    await put(storage, "k", b"abc")
    started, gate = trio.Event(), trio.Event()
    appended: list[ObjectInfo] = []

    async def appender() -> None:
        appended.append(await storage.write_object("b", "k", gated_body(b"d", b"e", started, gate), offset=3))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(appender)
        with trio.fail_after(5):
            await started.wait()
        nursery.start_soon(storage.delete_object, "b", "k")
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert appended[0].size == 5
    with pytest.raises(NoSuchKey):
        await storage.head_object("b", "k")
    assert data_files(storage.data_dir) == {}


async def test_bucket_deleted_while_an_object_is_being_created(storage: Storage) -> None:
    started, gate = trio.Event(), trio.Event()
    outcome: list[BaseException] = []

    async def creator() -> None:
        try:
            await storage.write_object("b", "k", gated_body(b"x" * (2 * MiB), b"y", started, gate), offset=0)
        except NoSuchBucket as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(creator)
        with trio.fail_after(5):
            await started.wait()
        await storage.delete_bucket("b")  # empty: the object is not committed yet
        gate.set()
    assert len(outcome) == 1
    await storage.create_bucket("b")
    assert await storage.list_objects("b") == []  # no orphan row
    assert data_files(storage.data_dir) == {}  # no orphan file
    assert await storage.stats() == (0, 0)


async def test_cancelled_writer_leaves_a_consistent_object(storage: Storage) -> None:
    await put(storage, "k", b"abc")
    started, never = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(storage.write_object, offset=3), "b", "k", gated_body(b"x" * 2 * MiB, b"", started, never))
        with trio.fail_after(5):
            await started.wait()
        nursery.cancel_scope.cancel()
    assert (await storage.head_object("b", "k")).size == 3
    assert (await put(storage, "k", b"d", offset=3)).size == 4
    assert await content(storage, "k") == b"abcd"
    assert sorted(data_files(storage.data_dir).values()) == [4]


async def test_slots_are_evicted_but_state_stays_right(tmp_path: Path) -> None:
    async with open_storage(tmp_path / "data", open_files=4) as storage:
        await storage.create_bucket("b")
        for round_ in range(3):
            for n in range(10):
                await put(storage, f"k{n}", b"x", offset=round_)
        assert len(storage._slots) <= 4
        for n in range(10):
            assert await content(storage, f"k{n}") == b"xxx"


@pytest.mark.parametrize(("soft", "hard", "expected", "soft_after"), [
    (1024, 20000, 4096, 16384),  # systemd's default soft limit is raised toward the hard one
    (200, 200, 50, 200),  # a hard limit that cannot be raised: a quarter of it
])
def test_open_files_follow_the_fd_limit(soft: int, hard: int, expected: int, soft_after: int) -> None:
    import subprocess
    import sys

    script = (f"import resource; resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}));"
              "from server.storage import default_open_files; n = default_open_files();"
              "print(n, resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    if hard > resource_hard_limit():
        pytest.skip(f"this machine's hard fd limit is below {hard}")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert [int(x) for x in out] == [expected, soft_after]


def resource_hard_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


async def test_is_writable(storage: Storage) -> None:
    assert await storage.is_writable()
    await storage.aclose()
    assert not await storage.is_writable()


async def test_the_writes_of_one_event_loop_turn_share_one_batch(storage: Storage) -> None:
    for n in range(8):
        await put(storage, f"turn{n}", b"a")
    before = storage._committer.batches
    async with trio.open_nursery() as nursery:  # all eight reach the committer in their first step
        for n in range(8):
            nursery.start_soon(put, storage, f"turn{n}", b"b", 1)
    process = storage._committer._process is not None
    assert storage._committer.batches == before + (8 // HAND_OVER_AT if process else 1)  # the process takes them by 4
    for n in range(8):
        assert await content(storage, f"turn{n}") == b"ab"


async def test_a_refused_commit_does_not_sink_its_batch(storage: Storage) -> None:
    """Writes to a bucket deleted under them fail at commit; the writes batched with them land."""
    await storage.create_bucket("doomed")
    gate = trio.Event()
    started = [trio.Event() for _ in range(10)]
    outcomes: dict[tuple[str, int], object] = {}

    async def writer(bucket: str, n: int, started: trio.Event) -> None:
        try:
            outcomes[bucket, n] = await storage.write_object(
                bucket, f"k{n}", gated_body(b"%d" % n, b"!", started, gate), offset=0
            )
        except NoSuchBucket as exc:
            outcomes[bucket, n] = exc

    async with trio.open_nursery() as nursery:
        for n, event in enumerate(started):
            nursery.start_soon(writer, "doomed" if n % 2 else "b", n, event)
        with trio.fail_after(5):
            for event in started:
                await event.wait()
        await storage.delete_bucket("doomed")
        gate.set()
    for (bucket, n), outcome in outcomes.items():
        if bucket == "doomed":
            assert isinstance(outcome, NoSuchBucket)
        else:
            assert isinstance(outcome, ObjectInfo) and await content(storage, f"k{n}") == b"%d!" % n
    assert len(data_files(storage.data_dir)) == 5  # the refused ones left no files
    assert storage._committer.batches < storage._committer.jobs  # they did share batches


def test_write_all_at_writes_pieces_in_order(tmp_path: Path) -> None:
    """A large body's pieces go to the data file in one pwritev, empty ones included."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        pieces = [b"abc", b"", bytearray(b"defg"), memoryview(b"hij")]
        assert write_all_at(fd, pieces, 5) == 10
        assert write_all_at(fd, [], 15) == 0
        assert os.pread(fd, 100, 0) == b"\0" * 5 + b"abcdefghij"
    finally:
        os.close(fd)
