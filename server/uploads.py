"""Multipart uploads on disk: their own SQLite file and part files, under ``DATA/uploads``.

Why apart from the object index: uploads change on their own schedule (a part
is durable long before any object exists) and must survive restarts, yet never
touch the append path's group commit.  Layout: ``uploads.sqlite3`` (``server.upload_index``: tables
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
from server import upload_index as index
from server.bodies import receive_body
from server.datafiles import DataFiles, PendingWrite
from server.errors import NoSuchUpload
from server.records import BodyDigest, BodyHasher
from server.upload_index import Part, Upload

__all__ = ["Part", "Upload", "UploadStore", "new_upload_id"]

log = structlog.get_logger()
T = TypeVar("T")



@dataclass
class _LockEntry:
    lock: trio.Lock
    users: int = 0  # holders and waiters


def new_upload_id() -> str:
    """A fresh id that never starts with "-": command lines take such a value for an
    option (``aws s3api upload-part --upload-id -x...`` fails with a usage error)."""
    return "u" + secrets.token_urlsafe(32)


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
        conn = index.connect(root / "uploads.sqlite3", durable=durable)
        store = cls(conn, files, max_part_size=max_part_size)
        store._recover()
        return store

    def _recover(self) -> None:
        conn = self._conn
        index.recover(conn, time.time())
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
        await self._db(index.insert_upload, upload)

    async def get(self, bucket: str, key: str, upload_id: str, *, completed: bool = False) -> Upload:
        """The upload (NoSuchUpload if unknown, of another object, or, unless ``completed``, finished)."""
        upload = await self._db(index.get_upload, upload_id)
        if upload is None or upload.bucket != bucket or upload.key != key or (
            upload.completed_at is not None and not completed
        ):
            raise NoSuchUpload(UploadId=upload_id)
        return upload

    async def list_open(self, bucket: str, prefix: str) -> list[Upload]:
        """The bucket's unfinished uploads under ``prefix``, by key then initiation time."""
        return await self._db(index.open_uploads, bucket, prefix)

    async def parts(self, upload_id: str) -> list[Part]:
        return await self._db(index.parts, upload_id)

    async def finish(self, upload_id: str, result: dict[str, Any]) -> None:
        """Mark the upload completed with ``result`` and remove its parts (call under its lock)."""
        file_ids = await self._db(index.complete, upload_id, json.dumps(result), time.time())
        await trio.to_thread.run_sync(self._unlink_all, file_ids)

    async def abort(self, upload_id: str) -> None:
        """Remove an unfinished upload and its parts (call under its lock)."""
        file_ids = await self._db(index.delete_upload, upload_id)
        await trio.to_thread.run_sync(self._unlink_all, file_ids)

    async def abort_bucket(self, bucket: str) -> None:
        """Drop every upload of a deleted bucket."""
        for upload_id in await self._db(index.bucket_uploads, bucket):
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
                replaced = await self._db(index.put_part, upload.upload_id, part)
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
