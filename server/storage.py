"""Durable object storage: data files for the bytes, a SQLite index for what is committed.

One write (the append contract's atomic step): take the object's lock → check
the offset against the committed length → receive the body into the data file
past the committed length → flush → commit the new length, ETag and CRC32 in
the index → release.  Whatever fails before the commit (client gone, refused
checksum, full disk, cancellation) puts the data file back; readers only ever
see committed lengths.  Concurrent writes share their flushes and commits
(``server.committer``); a small append's bytes are flushed with its commit, by
one syncfs after it (``CommitFlush``), and recovery checks them at start-up.
Small durable appends are written, committed and flushed by a child process
(``server.commit_process``), which needs no share of this process's GIL.

``fsync=False`` skips every flush (data files, directories; the WAL runs with
synchronous=NORMAL).  A process crash still loses nothing acknowledged (the
kernel has the bytes).  An OS crash or power loss may lose acknowledged
writes, and as the kernel then writes index and data back in no particular
order, the index may survive with a length whose bytes did not: start-up
recovery clamps such an object to the bytes on disk (``storage_object_lost_bytes``),
so nothing points past a file's end, but that tail may be partial, or zeros
where the filesystem left a hole.  For tests and data you can re-send.

Module map: ``records`` (types, ETag/CRC rules) · ``index`` (SQLite) ·
``datafiles`` (files) · ``bodies`` (bodies in, snapshots out) · ``slots``
(per-object locks) · ``committer`` (group commit) · ``commit_jobs`` (its jobs and
transactions) · ``commit_process`` and ``commit_child`` (its process) · ``recovery`` (start-up).
"""

from __future__ import annotations

import fcntl
import os
import resource
import sqlite3
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import structlog
import trio

from server import index
from server.bodies import ObjectReader, receive_body
from server.commit_jobs import CommitJob
from server.committer import GroupCommitter
from server.datafiles import DataFiles, PendingWrite
from server.errors import BucketAlreadyExists, BucketAlreadyOwnedByYou, InternalError, InvalidArgument, NoSuchBucket, NoSuchKey
from server.fileio import syncfs
from server.index import IndexedObject
from server.records import (
    MAX_BODY_SIZE,
    BodyDigest,
    BodyHasher,
    BucketInfo,
    MiB,
    NewObject,
    ObjectInfo,
    appended_info,
    created_info,
)
from server.recovery import recover
from server.slots import ObjectSlot, ObjectSlots
from server.uploads import UploadStore

__all__ = ["BodyDigest", "BucketInfo", "NewObject", "ObjectInfo", "ObjectReader", "Storage", "open_storage"]

log = structlog.get_logger()
T = TypeVar("T")

MIN_FREE_BYTES = 64 * MiB  # below this the server reports itself not ready


def _accept(_: Any) -> None:
    return None


def _ignore(_: Any) -> None:
    return None


def _close_snapshot(snapshot: tuple[ObjectInfo, int]) -> None:
    os.close(snapshot[1])


class Storage:
    """Buckets and objects on disk; see the module docstring for the write protocol."""

    def __init__(
        self, data_dir: Path, files: DataFiles, conn: sqlite3.Connection, buckets: dict[str, float], lock_fd: int,
        *, max_body_size: int, open_files: int, commit_flush: CommitFlush | None = None, commit_process: bool = True,
    ) -> None:
        self.data_dir = data_dir
        self._files = files
        self._conn = conn
        self._commit_flush = commit_flush
        self._committer = GroupCommitter(
            conn, files, trio.lowlevel.current_trio_token(), commit_flush, lock_fd if commit_process else None
        )
        self._readers = index.ReadConnections(data_dir / "index.sqlite3")
        self._slots = ObjectSlots(self._load, capacity=open_files)
        self._buckets = buckets  # storage is the only writer, so memory is exact
        self._lock_fd = lock_fd
        self._max_body_size = max_body_size
        self._closed = False
        self.uploads: UploadStore | None = None  # multipart uploads (server.uploads), set by open()
        # Objects with an append committed (or being committed) whose flush is not done: the index
        # shows it already, and a reader must not report it before it is durable (``_read_settled``).
        self._unsettled: dict[tuple[str, str], trio.Event | None] = {}

    def __repr__(self) -> str:
        return (
            f"Storage(data_dir={str(self.data_dir)!r}, durable={self._files.durable}, buckets={len(self._buckets)},"
            f" {self._slots!r}, {self._committer!r})"
        )

    @classmethod
    async def open(
        cls, data_dir: Path, *, fsync: bool = True, max_body_size: int = MAX_BODY_SIZE, open_files: int | None = None,
        commit_process: bool = True,
    ) -> Storage:
        """Open (creating if needed) the storage in ``data_dir`` and recover it from
        any crash.  ``open_files`` bounds the write fds kept open for hot objects
        (default: ``default_open_files()``).  ``commit_process``: small durable appends
        are committed by a child process (``server.commit_process``); False: by threads."""
        data_dir = Path(data_dir)
        open_files = open_files or default_open_files()

        def setup() -> tuple[DataFiles, sqlite3.Connection, dict[str, float], int, CommitFlush | None]:
            data_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = _lock_data_dir(data_dir)
            commit_flush = None
            try:
                files = DataFiles(data_dir / "objects", durable=fsync)
                files.prepare()
                commit_flush = CommitFlush(data_dir, files) if fsync and syncfs is not None else None
                conn = index.connect(data_dir / "index.sqlite3", durable=fsync, flushed_after_commit=commit_flush is not None)
                try:
                    report = recover(conn, files)
                    buckets = index.load_buckets(conn)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                if commit_flush is not None:
                    commit_flush.close()
                os.close(lock_fd)
                raise
            log.info("storage_opened", data_dir=str(data_dir), fsync=fsync, buckets=len(buckets), **vars(report))
            return files, conn, buckets, lock_fd, commit_flush

        files, conn, buckets, lock_fd, commit_flush = await trio.to_thread.run_sync(setup)
        storage = cls(data_dir, files, conn, buckets, lock_fd, max_body_size=max_body_size, open_files=open_files,
                      commit_flush=commit_flush, commit_process=commit_process)  # fmt: skip
        try:
            storage.uploads = await trio.to_thread.run_sync(
                lambda: UploadStore.open_sync(data_dir / "uploads", durable=fsync, max_part_size=max_body_size)
            )
        except BaseException:
            await storage.aclose()
            raise
        return storage

    async def aclose(self) -> None:
        """Close files and connections.  Call it when no request is using the storage."""
        if self._closed:
            return
        self._closed = True
        self._slots.close()
        await self._committer.detach()

        def close() -> None:
            if self.uploads is not None:
                self.uploads.close_sync()
            self._committer.close()
            self._readers.close()
            self._conn.close()
            if self._commit_flush is not None:
                self._commit_flush.close()
            os.close(self._lock_fd)  # releases the flock

        await trio.to_thread.run_sync(close)

    # -- buckets ---------------------------------------------------------------

    async def create_bucket(self, name: str, owner: str | None = None) -> None:
        """BucketAlreadyExists when another ``owner`` (access key) has it, else BucketAlreadyOwnedByYou."""
        if name in self._buckets:
            existing = await self._read(index.bucket_owner, name)
            if owner is not None and existing is not None and existing != owner:
                raise BucketAlreadyExists(resource=name, BucketName=name)
            raise BucketAlreadyOwnedByYou(resource=name, BucketName=name)
        created = time.time()
        await self._committer.run(CommitJob(apply=lambda conn: index.insert_bucket(conn, name, created, owner)))
        self._buckets[name] = created

    async def delete_bucket(self, name: str) -> None:
        """NoSuchBucket, BucketNotEmpty.  A create racing it either commits first
        (then BucketNotEmpty) or fails its commit with NoSuchBucket (foreign key)."""
        self._require_bucket(name)
        await self._committer.run(CommitJob(apply=lambda conn: index.delete_bucket(conn, name)))
        self._buckets.pop(name, None)

    async def get_bucket(self, name: str) -> BucketInfo:
        self._require_bucket(name)
        return BucketInfo(name=name, created=self._buckets[name])

    async def list_buckets(self) -> list[BucketInfo]:
        return [BucketInfo(name=name, created=self._buckets[name]) for name in sorted(self._buckets)]

    def _require_bucket(self, name: str) -> None:
        if name not in self._buckets:
            raise NoSuchBucket(resource=name, BucketName=name)

    # -- reading -----------------------------------------------------------------

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        self._require_bucket(bucket)
        row = await self._read_settled(bucket, key, lambda: self._read(index.get_object, bucket, key), _ignore)
        if row is None:
            raise NoSuchKey(Key=key)
        return row.info

    async def _read_settled(
        self, bucket: str, key: str, read: Callable[[], Awaitable[T]], drop: Callable[[T], None]
    ) -> T:
        """``read()`` of an object, never showing an append that is committed but not yet
        flushed: an append's commit is visible to the index's readers before the flush
        after it (``CommitFlush``), and a client that HEADs an object to learn whether its
        append landed must not be told it did before that is durable.  A read that
        overlapped such an append waits for the flush; if a flush failed meanwhile (its
        appends put back), ``drop`` gets the read and it is done again."""
        name = (bucket, key)
        while True:
            await self._settle(name)
            failures = self._committer.flush_failures
            result = await read()
            try:
                await self._settle(name)
            except BaseException:
                drop(result)
                raise
            if self._committer.flush_failures == failures:
                return result
            drop(result)

    async def _settle(self, name: tuple[str, str]) -> None:
        """Wait while an append of ``name`` is between its commit and its flush."""
        while name in self._unsettled:
            event = self._unsettled[name]
            if event is None:
                event = self._unsettled[name] = trio.Event()
            await event.wait()

    async def list_objects(
        self, bucket: str, *, prefix: str = "", start_after: str = "", limit: int = 1000
    ) -> list[ObjectInfo]:
        """Keys > start_after with the prefix, sorted by UTF-8 bytes, at most ``limit``.
        Each page is a range scan, so paging from any start_after is cheap."""
        self._require_bucket(bucket)
        return await self._read(index.list_objects, bucket, prefix=prefix, start_after=start_after, limit=limit)

    @asynccontextmanager
    async def open_reader(self, bucket: str, key: str) -> AsyncIterator[ObjectReader]:
        """A consistent snapshot of the object, readable while it changes."""
        self._require_bucket(bucket)
        info, fd = await self._read_settled(
            bucket, key, lambda: trio.to_thread.run_sync(self._open_snapshot, bucket, key), _close_snapshot
        )
        try:
            yield ObjectReader(info, fd)
        finally:
            os.close(fd)

    def _open_snapshot(self, bucket: str, key: str) -> tuple[ObjectInfo, int]:
        for _ in range(100):
            row = index.get_object(self._readers.get(), bucket, key)
            if row is None:
                raise NoSuchKey(Key=key)
            try:
                return row.info, self._files.open_read(row.file_id)
            except FileNotFoundError:
                continue  # replaced or deleted between the two steps: look again
        raise InternalError(f"object {bucket}/{key} kept changing while being opened")

    async def is_writable(self) -> bool:
        """For the readiness probe: open, and the data dir's filesystem has room."""
        if self._closed:
            return False
        fs = await trio.to_thread.run_sync(os.statvfs, self.data_dir)
        return fs.f_bavail * fs.f_frsize >= MIN_FREE_BYTES

    def commit_counts(self) -> tuple[int, int]:
        """(group commits, writes committed in them) since the storage opened."""
        return self._committer.batches, self._committer.jobs

    async def stats(self) -> tuple[int, int]:
        """(objects, bytes) over all buckets."""
        return await self._read(index.stats)

    async def _read(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(lambda: query(self._readers.get(), *args, **kwargs))

    # -- writing -----------------------------------------------------------------

    async def write_object(
        self,
        bucket: str,
        key: str,
        body: AsyncIterable[bytes],
        *,
        offset: int | None,
        new: NewObject | None = None,
        check_existing: Callable[[ObjectInfo | None], None] = _accept,
        check_body: Callable[[BodyDigest], None] = _accept,
        body_md5: bool = False,
    ) -> ObjectInfo:
        """Write ``body``: a plain PUT (``offset=None``) replaces the object, an int
        appends at that offset.  ``check_existing`` sees the committed object under
        its lock before any body byte is read; ``check_body`` sees the body's digest
        before anything is committed.  Either may raise to refuse; then nothing lands.
        ``body_md5``: an append computes its body's MD5 too (a Content-MD5 to check);
        a new object always has it (its ETag)."""
        self._require_bucket(bucket)
        async with self._slots.hold(bucket, key) as slot:
            row = slot.row
            current = row.info if row is not None else None
            if offset is not None:
                if current is None and offset > 0:
                    raise NoSuchKey(Key=key)
                if current is not None and offset != current.size:
                    raise InvalidArgument(
                        f"The write offset {offset} does not match the object size {current.size}",
                        ArgumentName="x-amz-write-offset-bytes",
                        ArgumentValue=str(offset),
                    )
            check_existing(current)
            if offset is not None and row is not None:
                return await self._append(slot, row, body, check_body, body_md5)
            return await self._replace(slot, bucket, key, body, new or NewObject(), check_body)

    async def _append(
        self, slot: ObjectSlot, row: IndexedObject, body: AsyncIterable[bytes],
        check_body: Callable[[BodyDigest], None], body_md5: bool,
    ) -> ObjectInfo:  # fmt: skip
        current = row.info
        pending = PendingWrite(self._files, row.file_id, slot.fd, current.size, fresh=False)
        hasher = BodyHasher.for_append(current, md5=body_md5)
        tail = await receive_body(body, hasher, pending, check_body, max_size=self._max_body_size)
        if hasher.size == 0:
            return current  # an empty append is a no-op: same ETag, same last_modified
        info = appended_info(
            current, hasher.digest(), hasher.object_crc32, time.time(), hasher.object_checksum(current.checksum)
        )
        job = CommitJob(appended=index.appended_row(info, row.file_id), pending=pending, tail=tail)
        if self._commit_flush is None:
            await self._committer.run(job)
        else:  # readers wait from its commit to its flush (_read_settled)
            name = (info.bucket, info.key)
            self._unsettled[name] = None
            try:
                await self._committer.run(job)
            finally:
                event = self._unsettled.pop(name)
                if event is not None:
                    event.set()
        slot.row = IndexedObject(info, row.file_id)
        return info

    async def _replace(
        self, slot: ObjectSlot, bucket: str, key: str, body: AsyncIterable[bytes], new: NewObject,
        check_body: Callable[[BodyDigest], None],
    ) -> ObjectInfo:
        """A new data file; once the index points at it, the old one is unlinked
        (readers that have it open keep reading it)."""
        file_id = self._files.new_id()
        pending = PendingWrite(self._files, file_id, None, 0, fresh=True)
        hasher = BodyHasher.for_new(new)
        tail = await receive_body(body, hasher, pending, check_body, max_size=self._max_body_size)
        info = created_info(bucket, key, hasher.digest(), new, time.time(), hasher.extra)
        old = slot.row
        await self._committer.run(
            CommitJob(
                apply=lambda conn: index.put_object(conn, info, file_id),
                pending=pending,
                tail=tail,
                after=None if old is None else lambda _: self._files.unlink(old.file_id),
            )
        )
        if slot.fd is not None:
            os.close(slot.fd)
        slot.row, slot.fd = IndexedObject(info, file_id), pending.fd
        return info

    async def delete_object(self, bucket: str, key: str) -> None:
        """Remove the object (after a write in progress); a missing key is fine."""
        self._require_bucket(bucket)
        async with self._slots.hold(bucket, key, load=False) as slot:
            if slot.loaded and slot.row is None:
                return
            await self._committer.run(
                CommitJob(apply=lambda conn: index.delete_object(conn, bucket, key), after=self._unlink_if_any)
            )
            slot.known_missing()

    def _unlink_if_any(self, file_id: str | None) -> None:
        if file_id is not None:
            self._files.unlink(file_id)

    def _load(self, bucket: str, key: str) -> tuple[IndexedObject | None, int | None]:
        row = index.get_object(self._readers.get(), bucket, key)
        return row, None if row is None else self._files.open_write(row.file_id)


class CommitFlush:
    """The one device flush after an index commit that makes it and the batch's small
    appends durable (``GroupCommitter``'s ``flush_after_commit``): syncfs(2) of the
    data dir's filesystem, which holds the index's WAL and, usually, the data files.
    Data files on a filesystem of their own get their own flush first."""

    def __init__(self, data_dir: Path, files: DataFiles) -> None:
        self._files = files
        self._fd = os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._data_elsewhere = os.stat(files.root).st_dev != os.fstat(self._fd).st_dev

    def __call__(self, unflushed: list[PendingWrite]) -> None:
        if unflushed and self._data_elsewhere:
            self._files.sync_writes(unflushed)
        syncfs(self._fd)  # type: ignore[misc]

    def close(self) -> None:
        os.close(self._fd)


OPEN_FILES = 4096  # hot objects whose state and write fd stay cached: an agent tailing a thousand logs appends to a thousand


def default_open_files() -> int:
    """How many objects' write fds to keep open: ``OPEN_FILES``, raising the soft fd limit toward
    the hard one if needed, and at most a quarter of what is allowed (sockets and readers need the rest).

    Below the cache's size every append to a round-robin of more objects than it holds reloads
    the object from the index and reopens its file: with 1,000 objects and 256 slots that
    halved the server's append rate (1,086 vs 2,139 appends/s, zero-cost client, 16 connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * OPEN_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if raised > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
                soft = raised
            except (ValueError, OSError):
                pass
    return OPEN_FILES if soft == resource.RLIM_INFINITY else max(16, min(OPEN_FILES, soft // 4))


LOCK_WAIT = 5.0  # seconds a starting server waits for the data dir's lock


def _lock_data_dir(data_dir: Path, wait: float = LOCK_WAIT) -> int:
    """One process per data dir: the per-object locks live in memory.  Waits
    ``wait`` seconds for it: a killed server's commit process holds it until the
    kernel has ended that process too (``server.commit_process``)."""
    lock_fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock_fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(lock_fd)
                raise RuntimeError(f"data dir {data_dir} is in use by another process") from None
            time.sleep(0.01)


@asynccontextmanager
async def open_storage(data_dir: Path, **options: Any) -> AsyncIterator[Storage]:
    """``async with open_storage(path) as storage:`` -- Storage.open + aclose."""
    storage = await Storage.open(data_dir, **options)
    try:
        yield storage
    finally:
        await storage.aclose()
