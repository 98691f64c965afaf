"""Multipart uploads on disk: their own SQLite file and part files, under ``DATA/uploads``.

Why apart from the object index: uploads change on their own schedule (a part
is durable long before any object exists) and must survive restarts, yet never
touch the append path's group commit.  Layout: ``uploads.sqlite3`` (tables
``uploads`` and ``parts``) and ``parts/<2 hex>/<id>`` (one file per part,
``server.datafiles`` naming).

A part: its body streams into a fresh file (bounded memory, ``receive_body``),
is flushed, then its row is committed (replacing an earlier part of the same
number, whose file goes).  Completing an upload writes the object through
``Storage.write_object`` (see ``server.multipart``), then marks the upload
completed here (its result kept a day, so a repeated Complete answers the
same) and removes its parts.  Abort removes rows and files.  At open, part
files no row names (a crash between file and commit) are deleted: nothing leaks.

Per upload, a trio lock orders part commits, Complete and Abort: a part
arriving while its upload completes waits, then finds the upload gone.
Everything blocking runs in worker threads; one connection, one thread at a time.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
import trio

from server import checksums
from server.bodies import receive_body
from server.datafiles import DataFiles, PendingWrite
from server.errors import NoSuchUpload
from server.records import BodyDigest, BodyHasher

log = structlog.get_logger()
T = TypeVar("T")

COMPLETED_KEPT_SECONDS = 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL,
    key TEXT NOT NULL,
    initiated REAL NOT NULL,
    owner TEXT NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL,
    system TEXT NOT NULL,
    checksum_algorithm TEXT,
    checksum_type TEXT,
    completed_at REAL,
    result TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS uploads_by_key ON uploads (bucket, key, initiated);
CREATE TABLE IF NOT EXISTS parts (
    upload_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    file_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    checksum TEXT,
    PRIMARY KEY (upload_id, number)
) WITHOUT ROWID;
"""
_UPLOAD_COLUMNS = (
    "upload_id, bucket, key, initiated, owner, content_type, metadata, system, checksum_algorithm, checksum_type,"
    " completed_at, result"
)
_PART_COLUMNS = "number, size, etag, last_modified, checksum, file_id"


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    owner: str  # access key id of the initiator
    content_type: str | None
    metadata: dict[str, str]
    system: dict[str, str]
    checksum_algorithm: str | None  # e.g. "crc32"; None: parts carry no checksum of their own
    checksum_type: str | None  # "COMPOSITE" or "FULL_OBJECT" (with an algorithm)
    completed_at: float | None = None
    result: dict[str, Any] | None = None  # once completed: what Complete answered


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str  # unquoted MD5 hex
    last_modified: float
    checksum: str | None  # base64 digest in the upload's algorithm
    file_id: str


@dataclass
class _LockEntry:
    lock: trio.Lock
    users: int = 0  # holders and waiters


def new_upload_id() -> str:
    return secrets.token_urlsafe(32)


class UploadStore:
    """Uploads and their parts; see the module docstring."""

    def __init__(self, conn: sqlite3.Connection, files: DataFiles, *, max_part_size: int) -> None:
        self._conn = conn
        self._files = files
        self._max_part_size = max_part_size
        self._db_lock = threading.Lock()
        self._locks: dict[str, _LockEntry] = {}

    def __repr__(self) -> str:
        return f"UploadStore(parts={str(self._files.root)!r}, busy={len(self._locks)})"

    @classmethod
    def open_sync(cls, root: Path, *, durable: bool, max_part_size: int) -> UploadStore:
        """Open (creating) the store and drop what no committed row names.  Blocking."""
        root.mkdir(parents=True, exist_ok=True)
        files = DataFiles(root / "parts", durable=durable)
        files.prepare()
        conn = sqlite3.connect(root / "uploads.sqlite3", isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        conn.executescript(_SCHEMA)
        store = cls(conn, files, max_part_size=max_part_size)
        store._recover()
        return store

    def _recover(self) -> None:
        conn = self._conn
        conn.execute("DELETE FROM uploads WHERE completed_at IS NOT NULL AND completed_at < ?",
                     (time.time() - COMPLETED_KEPT_SECONDS,))  # fmt: skip
        conn.execute("DELETE FROM parts WHERE upload_id NOT IN (SELECT upload_id FROM uploads WHERE completed_at IS NULL)")
        known = {row[0] for row in conn.execute("SELECT file_id FROM parts")}
        removed = 0
        present = set()
        for file_id, _size in self._files.scan():
            if file_id not in known:
                self._files.unlink(file_id)
                removed += 1
            else:
                present.add(file_id)
        if removed:
            log.info("uploads_orphan_parts_deleted", count=removed)
        for file_id in known - present:  # lost from disk: the part must be sent again
            upload_id, number = conn.execute("SELECT upload_id, number FROM parts WHERE file_id = ?", (file_id,)).fetchone()
            conn.execute("DELETE FROM parts WHERE file_id = ?", (file_id,))
            log.error("uploads_part_file_missing", upload_id=upload_id, part=number, file_id=file_id)

    def close_sync(self) -> None:
        with self._db_lock:
            self._conn.close()

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            with self._db_lock:
                return fn(self._conn, *args)

        return await trio.to_thread.run_sync(run)

    @asynccontextmanager
    async def locked(self, upload_id: str) -> AsyncIterator[None]:
        """Hold the upload's lock (part commits, Complete and Abort do).  Entries live
        only while held or awaited, so unknown upload ids leave nothing behind."""
        entry = self._locks.get(upload_id)
        if entry is None:
            entry = self._locks[upload_id] = _LockEntry(trio.Lock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[upload_id]

    # -- uploads -------------------------------------------------------------

    async def create(self, upload: Upload) -> None:
        await self._db(_insert_upload, upload)

    async def get(self, bucket: str, key: str, upload_id: str, *, completed: bool = False) -> Upload:
        """The upload (NoSuchUpload if unknown, of another object, or, unless ``completed``, finished)."""
        upload = await self._db(_get_upload, upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key or (
            upload.completed_at is not None and not completed
        ):
            raise NoSuchUpload(UploadId=upload_id)
        return upload

    async def list_open(self, bucket: str, prefix: str) -> list[Upload]:
        """The bucket's unfinished uploads under ``prefix``, by key then initiation time."""
        return await self._db(_open_uploads, bucket, prefix)

    async def parts(self, upload_id: str) -> list[Part]:
        return await self._db(_parts, upload_id)

    async def finish(self, upload_id: str, result: dict[str, Any]) -> None:
        """Mark the upload completed with ``result`` and remove its parts (call under its lock)."""
        file_ids = await self._db(_complete, upload_id, json.dumps(result), time.time())
        await trio.to_thread.run_sync(self._unlink_all, file_ids)

    async def abort(self, upload_id: str) -> None:
        """Remove an unfinished upload and its parts (call under its lock)."""
        file_ids = await self._db(_delete_upload, upload_id)
        await trio.to_thread.run_sync(self._unlink_all, file_ids)

    async def abort_bucket(self, bucket: str) -> None:
        """Drop every upload of a deleted bucket."""
        for upload_id in await self._db(_bucket_uploads, bucket):
            async with self.locked(upload_id):
                await self.abort(upload_id)

    def _unlink_all(self, file_ids: list[str]) -> None:
        for file_id in file_ids:
            self._files.unlink(file_id)

    # -- parts -----------------------------------------------------------------

    async def write_part(
        self, upload: Upload, number: int, body: AsyncIterable[bytes], check_body: Callable[[BodyHasher], None]
    ) -> Part:
        """Receive a part's body into a new file, then commit it (NoSuchUpload if the
        upload finished meanwhile: then nothing of the part remains)."""
        file_id = self._files.new_id()
        pending = PendingWrite(self._files, file_id, None, 0, fresh=True)
        algorithm = upload.checksum_algorithm
        hasher = BodyHasher(extra=checksums.FACTORIES[algorithm]() if algorithm else None)

        def check(digest: BodyDigest) -> None:
            check_body(hasher)

        tail = await receive_body(body, hasher, pending, check, max_size=self._max_part_size)
        digest = hasher.digest()
        part = Part(
            number, digest.size, digest.md5.hex(), time.time(),
            checksums.encode(hasher.extra.digest()) if hasher.extra is not None else None, file_id,
        )  # fmt: skip
        try:
            await trio.to_thread.run_sync(self._flush, pending, tail)
            async with self.locked(upload.upload_id):
                replaced = await self._db(_put_part, upload.upload_id, part)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(pending.discard)
            raise
        if replaced is not None:
            await trio.to_thread.run_sync(self._files.unlink, replaced)
        return part

    def _flush(self, pending: PendingWrite, tail: bytes) -> None:
        pending.finish_writing(tail)
        self._files.sync_writes([pending])
        if pending.fd is not None:
            os.close(pending.fd)
            pending.fd = None

    def open_part(self, part: Part) -> int:
        """A read fd on a part's file (blocking)."""
        return self._files.open_read(part.file_id)


# -- SQL (called with the connection, in a worker thread) ------------------------


def _insert_upload(conn: sqlite3.Connection, u: Upload) -> None:
    conn.execute(
        f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
        (u.upload_id, u.bucket, u.key, u.initiated, u.owner, u.content_type, json.dumps(u.metadata),
         json.dumps(u.system), u.checksum_algorithm, u.checksum_type),
    )  # fmt: skip


def _upload(row: tuple) -> Upload:
    upload_id, bucket, key, initiated, owner, content_type, metadata, system, algorithm, type_, done, result = row
    return Upload(upload_id, bucket, key, initiated, owner, content_type, json.loads(metadata), json.loads(system),
                  algorithm, type_, done, json.loads(result) if result else None)  # fmt: skip


def _get_upload(conn: sqlite3.Connection, upload_id: str) -> Upload | None:
    row = conn.execute(f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
    return None if row is None else _upload(row)


def _open_uploads(conn: sqlite3.Connection, bucket: str, prefix: str) -> list[Upload]:
    rows = conn.execute(
        f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE bucket = ? AND completed_at IS NULL"
        " AND substr(key, 1, ?) = ? ORDER BY key, initiated, upload_id",
        (bucket, len(prefix), prefix),
    )
    return [_upload(row) for row in rows]


def _bucket_uploads(conn: sqlite3.Connection, bucket: str) -> list[str]:
    return [row[0] for row in conn.execute("SELECT upload_id FROM uploads WHERE bucket = ?", (bucket,))]


def _parts(conn: sqlite3.Connection, upload_id: str) -> list[Part]:
    rows = conn.execute(f"SELECT {_PART_COLUMNS} FROM parts WHERE upload_id = ? ORDER BY number", (upload_id,))
    return [Part(*row) for row in rows]


def _put_part(conn: sqlite3.Connection, upload_id: str, part: Part) -> str | None:
    """Commit a part; returns the file id of the part it replaces.  NoSuchUpload if the upload is gone."""
    with conn:  # one transaction
        conn.execute("BEGIN IMMEDIATE")
        if conn.execute("SELECT 1 FROM uploads WHERE upload_id = ? AND completed_at IS NULL", (upload_id,)).fetchone() is None:
            raise NoSuchUpload(UploadId=upload_id)
        old = conn.execute("SELECT file_id FROM parts WHERE upload_id = ? AND number = ?", (upload_id, part.number)).fetchone()
        conn.execute(
            f"INSERT OR REPLACE INTO parts (upload_id, {_PART_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (upload_id, part.number, part.size, part.etag, part.last_modified, part.checksum, part.file_id),
        )
    return None if old is None else old[0]


def _complete(conn: sqlite3.Connection, upload_id: str, result: str, now: float) -> list[str]:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        file_ids = [row[0] for row in conn.execute("SELECT file_id FROM parts WHERE upload_id = ?", (upload_id,))]
        conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        conn.execute("UPDATE uploads SET completed_at = ?, result = ? WHERE upload_id = ?", (now, result, upload_id))
        conn.execute("DELETE FROM uploads WHERE completed_at IS NOT NULL AND completed_at < ?", (now - COMPLETED_KEPT_SECONDS,))
    return file_ids


def _delete_upload(conn: sqlite3.Connection, upload_id: str) -> list[str]:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        file_ids = [row[0] for row in conn.execute("SELECT file_id FROM parts WHERE upload_id = ?", (upload_id,))]
        conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
    return file_ids
