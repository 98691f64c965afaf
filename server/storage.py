"""Durable object storage: data files for the bytes, a SQLite index for what is committed.

One write (the append contract's atomic step): take the object's lock → check
the offset against the committed length → receive the body into the data file
past the committed length → fsync → commit the new length, ETag and CRC32 in
the index → release.  Whatever fails before the commit (client gone, refused
checksum, full disk) puts the data file back; readers only ever see committed
lengths.  Commits of concurrent writes share one worker-thread hop and one
WAL fsync (``server.committer``).

``fsync=False`` skips every fsync (data files, directories, and the WAL runs
with synchronous=NORMAL).  A process crash still loses nothing acknowledged
(the kernel has the bytes).  An OS crash or power loss may lose acknowledged
writes, and since the index and data files are then flushed by the kernel in
no particular order, the index may survive with a length whose bytes did not:
start-up recovery clamps such an object to the bytes on disk (logged as
``storage_object_lost_bytes``), so nothing ever points past a file's end, but
the surviving tail may hold zeros where the filesystem did.  Use it for tests
and for data you can re-send.

Module map: ``records`` (types, ETag/CRC rules) · ``index`` (SQLite) ·
``datafiles`` (files) · ``committer`` (group commit) · ``recovery`` (start-up).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import structlog
import trio

from server import index
from server.committer import CommitJob, GroupCommitter
from server.datafiles import DataFiles, PendingWrite, read_at
from server.errors import (
    BucketAlreadyOwnedByYou,
    EntityTooLarge,
    InternalError,
    InvalidArgument,
    NoSuchBucket,
    NoSuchKey,
    S3Error,
)
from server.index import IndexedObject
from server.records import (
    MAX_BODY_SIZE,
    BodyDigest,
    BodyHasher,
    BucketInfo,
    KiB,
    MiB,
    NewObject,
    ObjectInfo,
    appended_info,
    created_info,
)
from server.recovery import recover

__all__ = ["BodyDigest", "BucketInfo", "NewObject", "ObjectInfo", "ObjectReader", "Storage", "open_storage"]

log = structlog.get_logger()
T = TypeVar("T")

SPILL_SIZE = 1 * MiB  # body bytes held in memory before they go to the data file
INLINE_HASH_LIMIT = 64 * KiB  # larger remainders are hashed (and written) in a worker thread
MIN_FREE_BYTES = 64 * MiB  # below this the server reports itself not ready


def _accept(_: Any) -> None:
    return None


@dataclass(eq=False)
class _Slot:
    """One object's writer state: the lock that serialises its writes and,
    once loaded, its committed row and an open write fd (valid under the lock)."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0  # holders and waiters; a slot in use is never evicted
    loaded: bool = False
    row: IndexedObject | None = None
    fd: int | None = None

    def forget(self) -> None:
        self.loaded, self.row = False, None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class ObjectReader:
    """An open snapshot of one object: ``info`` and the bytes it describes, even
    if the object is appended to, replaced or deleted while it is read."""

    def __init__(self, info: ObjectInfo, fd: int) -> None:
        self.info = info
        self._fd = fd

    def __repr__(self) -> str:
        return f"ObjectReader(bucket={self.info.bucket!r}, key={self.info.key!r}, size={self.info.size})"

    async def stream(self, start: int = 0, end: int | None = None, chunk: int = 256 * KiB) -> AsyncIterator[bytes]:
        """Bytes [start, end) of the snapshot (end defaults to its size), in chunks."""
        end = self.info.size if end is None else min(end, self.info.size)
        if start < 0 or start > end or chunk <= 0:
            raise ValueError(f"bad range [{start}, {end}) of {self.info.size} bytes (chunk {chunk})")
        position = start
        while position < end:
            length = min(chunk, end - position)
            data = await trio.to_thread.run_sync(read_at, self._fd, position, length)
            position += length
            yield data


class Storage:
    """Buckets and objects on disk; see the module docstring for the write protocol."""

    def __init__(
        self, data_dir: Path, files: DataFiles, conn: sqlite3.Connection, buckets: dict[str, float], lock_fd: int,
        *, max_body_size: int, open_files: int,
    ) -> None:
        self.data_dir = data_dir
        self._files = files
        self._conn = conn
        self._committer = GroupCommitter(conn, files)
        self._buckets = buckets
        self._lock_fd = lock_fd
        self._max_body_size = max_body_size
        self._open_files = open_files
        self._slots: OrderedDict[tuple[str, str], _Slot] = OrderedDict()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"Storage(data_dir={str(self.data_dir)!r}, durable={self._files.durable}, buckets={len(self._buckets)},"
            f" slots={len(self._slots)}, {self._committer!r})"
        )

    @classmethod
    async def open(
        cls, data_dir: Path, *, fsync: bool = True, max_body_size: int = MAX_BODY_SIZE, open_files: int = 256
    ) -> Storage:
        """Open (creating if needed) the storage in ``data_dir`` and recover it from
        any crash.  ``open_files`` bounds the write fds kept open for hot objects."""
        data_dir = Path(data_dir)

        def setup() -> tuple[DataFiles, sqlite3.Connection, dict[str, float], int]:
            data_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(lock_fd)
                raise RuntimeError(f"data dir {data_dir} is in use by another process") from None
            files = DataFiles(data_dir / "objects", durable=fsync)
            files.prepare()
            conn = index.connect(data_dir / "index.sqlite3", durable=fsync)
            try:
                report = recover(conn, files)
                buckets = index.load_buckets(conn)
            except BaseException:
                conn.close()
                os.close(lock_fd)
                raise
            log.info("storage_opened", data_dir=str(data_dir), fsync=fsync, buckets=len(buckets), **vars(report))
            return files, conn, buckets, lock_fd

        files, conn, buckets, lock_fd = await trio.to_thread.run_sync(setup)
        return cls(data_dir, files, conn, buckets, lock_fd, max_body_size=max_body_size, open_files=open_files)

    async def aclose(self) -> None:
        """Close files and connections.  Call it when no request is using the storage."""
        if self._closed:
            return
        self._closed = True
        for slot in self._slots.values():
            slot.forget()
        self._slots.clear()

        def close() -> None:
            with self._readers_lock:
                for conn in self._readers:
                    conn.close()
                self._readers.clear()
            self._conn.close()
            os.close(self._lock_fd)  # releases the flock

        await trio.to_thread.run_sync(close)

    # -- buckets ---------------------------------------------------------------

    async def create_bucket(self, name: str) -> None:
        if name in self._buckets:
            raise BucketAlreadyOwnedByYou(resource=name, BucketName=name)
        created = time.time()
        await self._committer.run(CommitJob(apply=lambda conn: index.insert_bucket(conn, name, created)))
        self._buckets[name] = created

    async def delete_bucket(self, name: str) -> None:
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
        row = await self._read(index.get_object, bucket, key)
        if row is None:
            raise NoSuchKey(Key=key)
        return row.info

    async def list_objects(
        self, bucket: str, *, prefix: str = "", start_after: str = "", limit: int = 1000
    ) -> list[ObjectInfo]:
        """Keys > start_after with the prefix, sorted by UTF-8 bytes, at most ``limit``.
        Each page is a range scan, so paging from any start_after is cheap."""
        self._require_bucket(bucket)
        return await self._read(index.list_objects, bucket, prefix=prefix, start_after=start_after, limit=limit)

    @asynccontextmanager
    async def open_reader(self, bucket: str, key: str) -> AsyncIterator[ObjectReader]:
        self._require_bucket(bucket)
        info, fd = await trio.to_thread.run_sync(self._open_snapshot, bucket, key)
        try:
            yield ObjectReader(info, fd)
        finally:
            os.close(fd)

    def _open_snapshot(self, bucket: str, key: str) -> tuple[ObjectInfo, int]:
        for _ in range(100):
            row = index.get_object(self._reader_conn(), bucket, key)
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

    async def stats(self) -> tuple[int, int]:
        """(objects, bytes) over all buckets."""
        return await self._read(index.stats)

    async def _read(self, query: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(lambda: query(self._reader_conn(), *args, **kwargs))

    def _reader_conn(self) -> sqlite3.Connection:
        """This worker thread's read-only connection (WAL readers never block the writer)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = index.connect(self.data_dir / "index.sqlite3", durable=False, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

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
    ) -> ObjectInfo:
        """Write ``body``: a plain PUT (``offset=None``) replaces the object, an int
        appends at that offset.  ``check_existing`` sees the committed object under
        its lock before any body byte is read; ``check_body`` sees the body's digest
        before anything is committed.  Either may raise to refuse; then nothing lands."""
        self._require_bucket(bucket)
        async with self._writing(bucket, key) as slot:
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
                return await self._append(slot, row, body, check_body)
            return await self._replace(slot, bucket, key, body, new or NewObject(), check_body)

    async def _append(
        self, slot: _Slot, row: IndexedObject, body: AsyncIterable[bytes], check_body: Callable[[BodyDigest], None]
    ) -> ObjectInfo:
        current = row.info
        pending = PendingWrite(self._files, row.file_id, slot.fd, current.size, fresh=False)
        hasher = BodyHasher(extends_crc32=current.crc32)
        tail = await self._receive(body, hasher, pending, check_body)
        if hasher.size == 0:
            return current  # an empty append is a no-op: same ETag, same last_modified
        info = appended_info(current, hasher.digest(), hasher.object_crc32, time.time())
        await self._commit_write(pending, tail, lambda conn: index.update_appended(conn, info, row.file_id))
        slot.row = IndexedObject(info, row.file_id)
        return info

    async def _replace(
        self, slot: _Slot, bucket: str, key: str, body: AsyncIterable[bytes], new: NewObject,
        check_body: Callable[[BodyDigest], None],
    ) -> ObjectInfo:
        file_id = self._files.new_id()
        pending = PendingWrite(self._files, file_id, None, 0, fresh=True)
        hasher = BodyHasher()
        tail = await self._receive(body, hasher, pending, check_body)
        info = created_info(bucket, key, hasher.digest(), new, time.time())
        old = slot.row
        await self._commit_write(
            pending,
            tail,
            lambda conn: index.put_object(conn, info, file_id),
            after=None if old is None else lambda _: self._files.unlink(old.file_id),
        )
        if slot.fd is not None:
            os.close(slot.fd)
        slot.row, slot.fd = IndexedObject(info, file_id), pending.fd
        return info

    async def _commit_write(
        self, pending: PendingWrite, tail: bytes, apply: Callable[[sqlite3.Connection], None],
        after: Callable[[Any], None] | None = None,
    ) -> None:
        """Write the body's last bytes, make them durable, commit ``apply`` -- all in
        the group commit's one hop (``server.committer``)."""
        await self._committer.run(CommitJob(apply=apply, pending=pending, tail=tail, after=after))

    async def _receive(
        self, body: AsyncIterable[bytes], hasher: BodyHasher, pending: PendingWrite,
        check_body: Callable[[BodyDigest], None],
    ) -> bytes:
        """Read and hash the whole body, then let ``check_body`` judge it.  Up to
        SPILL_SIZE stays in memory; beyond that it goes to the data file past the
        committed length in ~SPILL_SIZE writes.  Returns the bytes still to be
        written (by the commit's ``prepare``).  On any failure the file is put back."""
        try:
            chunks: list[bytes] = []
            buffered = total = 0
            async for chunk in body:
                if not chunk:
                    continue
                total += len(chunk)
                if total > self._max_body_size:
                    raise EntityTooLarge(MaxSizeAllowed=str(self._max_body_size))
                chunks.append(chunk)
                buffered += len(chunk)
                if buffered >= SPILL_SIZE:
                    await trio.to_thread.run_sync(_hash_and_write, hasher, pending, b"".join(chunks))
                    chunks.clear()
                    buffered = 0
            tail = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            if len(tail) > INLINE_HASH_LIMIT:
                await trio.to_thread.run_sync(_hash_and_write, hasher, pending, tail)
                tail = b""
            else:
                hasher.update(tail)
            check_body(hasher.digest())
            return tail
        except BaseException:
            if pending.touched:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(pending.discard)
            raise

    async def delete_object(self, bucket: str, key: str) -> None:
        """Remove the object (waiting for a write in progress); a missing key is fine."""
        self._require_bucket(bucket)
        async with self._writing(bucket, key, load=False) as slot:
            if slot.loaded and slot.row is None:
                return
            await self._committer.run(
                CommitJob(
                    apply=lambda conn: index.delete_object(conn, bucket, key),
                    after=self._unlink_if_any,
                )
            )
            slot.forget()
            slot.loaded = True  # known: missing

    def _unlink_if_any(self, file_id: str | None) -> None:
        if file_id is not None:
            self._files.unlink(file_id)

    def _writing(self, bucket: str, key: str, *, load: bool = True) -> _Held:
        """``async with``: hold the object's lock, with its committed state loaded."""
        return _Held(self, (bucket, key), load)

    def _load(self, bucket: str, key: str) -> tuple[IndexedObject | None, int | None]:
        row = index.get_object(self._reader_conn(), bucket, key)
        return row, None if row is None else self._files.open_write(row.file_id)

    def _evict_idle(self) -> None:
        for name, slot in list(self._slots.items()):  # least recently used first
            if len(self._slots) <= self._open_files:
                return
            if slot.users == 0:
                del self._slots[name]
                slot.forget()


class _Held:
    """The async context manager of ``Storage._writing`` (a class: it is on every write's path)."""

    __slots__ = ("_storage", "_name", "_load", "_slot")

    def __init__(self, storage: Storage, name: tuple[str, str], load: bool) -> None:
        self._storage, self._name, self._load = storage, name, load

    async def __aenter__(self) -> _Slot:
        slots = self._storage._slots
        slot = slots.get(self._name)
        if slot is None:
            slot = slots[self._name] = _Slot()
        else:
            slots.move_to_end(self._name)
        slot.users += 1
        self._slot = slot
        try:
            try:
                slot.lock.acquire_nowait()  # the common case costs no trip through the scheduler
            except trio.WouldBlock:
                await slot.lock.acquire()
            try:
                if self._load and not slot.loaded:
                    slot.row, slot.fd = await trio.to_thread.run_sync(self._storage._load, *self._name)
                    slot.loaded = True
            except BaseException:
                slot.forget()
                slot.lock.release()
                raise
        except BaseException:
            self._release()
            raise
        return slot

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, S3Error):
            self._slot.forget()  # unknown outcome: reload from the index next time
        # (an S3Error is a refusal: the committed state is unchanged and still known)
        self._slot.lock.release()
        self._release()

    def _release(self) -> None:
        self._slot.users -= 1
        storage = self._storage
        if len(storage._slots) > storage._open_files:
            storage._evict_idle()


def _hash_and_write(hasher: BodyHasher, pending: PendingWrite, data: bytes) -> None:
    hasher.update(data)
    pending.write(data)


@asynccontextmanager
async def open_storage(data_dir: Path, **options: Any) -> AsyncIterator[Storage]:
    """``async with open_storage(path) as storage:`` -- Storage.open + aclose."""
    storage = await Storage.open(data_dir, **options)
    try:
        yield storage
    finally:
        await storage.aclose()
