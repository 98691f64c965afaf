"""Start-up recovery: make the data files agree with the committed index.

After a crash a data file may be longer than its committed length (an append
was writing when the process died): truncate it back.  A data file no index
row refers to is the leftover of a PUT or create that never committed: delete
it.  Both are routine.

A small append is committed before its bytes are flushed, and one flush after
the commit makes both durable (``server.committer``).  A power loss between the
two may leave the commit on disk without all of the bytes: such a row still
holds the object's previous state, so its appended bytes are read back and
checked against its CRC32 (the previous CRC32 extended over them); if they
differ, the row is put back to that previous state (``storage_unflushed_append_rolled_back``)
-- that append was never acknowledged -- and its tail is truncated like any
other uncommitted one.  Appends found whole are flushed (syncfs) before the
server starts: a process that died between commit and flush left them in the
page cache only; then their previous states are dropped.  So a start reads
the last append (at most ``committer.UNFLUSHED_MAX`` bytes) of each object
appended to since the previous start.

A data file SHORTER than its committed length (or missing) cannot come from a
process crash; it means the disk lost acknowledged bytes (power loss with
``fsync=False``, or damage).  The row is clamped to the bytes that exist, its
ETag and CRC32 recomputed from them, and the event logged as an error: the
index never points past the end of a file.

Blocking; runs in one worker thread before the storage serves anything.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from server import index
from server.datafiles import DataFiles, read_at
from server.fileio import syncfs
from server.records import MiB

log = structlog.get_logger()


@dataclass(frozen=True)
class RecoveryReport:
    truncated: int  # data files cut back to their committed length
    deleted: int  # unreferenced data files removed
    damaged: int  # objects clamped to fewer bytes than committed (lost data)
    rolled_back: int  # unflushed appends whose bytes did not reach the disk, undone
    verified: int  # unflushed appends found whole (then flushed: their process may have died before its flush)


def recover(conn: sqlite3.Connection, files: DataFiles) -> RecoveryReport:
    rolled_back, kept = _roll_back_unflushed(conn, files)
    if kept:
        if files.durable:
            # After a process crash those bytes may be in the page cache only (its flush never
            # ran): make them durable before anyone is told the append is there.
            _flush_filesystem(files.root)
        index.forget_previous_states(conn)  # on disk now: the next start need not read them again
    rows = {obj.file_id: obj for obj in index.all_objects(conn)}
    truncated = deleted = damaged = 0
    seen: set[str] = set()
    for file_id, size in files.scan():
        obj = rows.get(file_id)
        if obj is None:
            files.unlink(file_id)
            deleted += 1
            log.info("storage_orphan_deleted", file_id=file_id, size=size)
            continue
        seen.add(file_id)
        committed = obj.info.size
        if size > committed:
            fd = files.open_write(file_id)
            try:
                os.ftruncate(fd, committed)
                files.sync(fd)
            finally:
                os.close(fd)
            truncated += 1
            log.info(
                "storage_uncommitted_tail_truncated",
                bucket=obj.info.bucket,
                key=obj.info.key,
                file_size=size,
                committed=committed,
            )
        elif size < committed:
            _clamp(conn, files, obj, size)
            damaged += 1
    for file_id, obj in rows.items():
        if file_id not in seen:
            os.close(files.create(file_id))
            files.sync_dir_of(file_id)
            _clamp(conn, files, obj, 0)
            damaged += 1
    if files.durable:  # what recovery changed is on disk before anything new is written
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return RecoveryReport(
        truncated=truncated, deleted=deleted, damaged=damaged, rolled_back=rolled_back, verified=kept
    )


def _roll_back_unflushed(conn: sqlite3.Connection, files: DataFiles) -> tuple[int, int]:
    """Put back every unflushed append whose bytes are not all on disk; (how many, how many kept)."""
    undo = []
    kept = 0
    for bucket, key, file_id, size, crc32, prev_size, prev_crc32 in index.unflushed_appends(conn):
        if _bytes_match(files, file_id, prev_size, size, prev_crc32, crc32):
            kept += 1
            continue
        undo.append((bucket, key, file_id))
        log.warning("storage_unflushed_append_rolled_back", bucket=bucket, key=key, committed=size, back_to=prev_size)
    index.roll_back_appends(conn, undo)
    return len(undo), kept


def _flush_filesystem(root: Path) -> None:
    """syncfs(2) of the filesystem holding ``root`` (sync(2) where there is none)."""
    if syncfs is None:
        os.sync()
        return
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def _bytes_match(files: DataFiles, file_id: str, start: int, end: int, start_crc32: int, end_crc32: int) -> bool:
    """Whether the data file holds [start, end) and they extend ``start_crc32`` to ``end_crc32``."""
    try:
        fd = files.open_read(file_id)
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_size < end:
            return False
        crc = start_crc32
        for offset in range(start, end, MiB):
            crc = zlib.crc32(read_at(fd, offset, min(MiB, end - offset)), crc)
        return crc == end_crc32
    finally:
        os.close(fd)


def _clamp(conn: sqlite3.Connection, files: DataFiles, obj: index.IndexedObject, size: int) -> None:
    md5 = hashlib.md5()
    crc = 0
    fd = files.open_read(obj.file_id)
    try:
        for offset in range(0, size, MiB):
            chunk = read_at(fd, offset, min(MiB, size - offset))
            md5.update(chunk)
            crc = zlib.crc32(chunk, crc)
    finally:
        os.close(fd)
    info = obj.info
    etag = md5.hexdigest() if info.appends <= 1 else f"{md5.hexdigest()}-{info.appends}"
    index.put_object(conn, replace(info, size=size, etag=etag, crc32=crc, checksum=None), obj.file_id)
    log.error(
        "storage_object_lost_bytes",
        bucket=info.bucket,
        key=info.key,
        committed=info.size,
        on_disk=size,
        file_id=obj.file_id,
    )
