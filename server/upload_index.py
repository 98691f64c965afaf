"""The multipart uploads' SQLite file: schema, rows, statements.  Blocking, no trio.

Each function takes the connection and runs in the upload store's worker
thread (``server.uploads``), one at a time.  Changes that touch several rows
are one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from server.errors import NoSuchUpload

COMPLETED_KEPT_SECONDS = 24 * 3600  # a completed upload's result answers repeated Completes this long

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


def insert_upload(conn: sqlite3.Connection, u: Upload) -> None:
    conn.execute(
        f"INSERT INTO uploads ({_UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)",
        (u.upload_id, u.bucket, u.key, u.initiated, u.owner, u.content_type, json.dumps(u.metadata),
         json.dumps(u.system), u.checksum_algorithm, u.checksum_type),
    )  # fmt: skip


def _upload(row: tuple) -> Upload:
    upload_id, bucket, key, initiated, owner, content_type, metadata, system, algorithm, type_, done, result = row
    return Upload(upload_id, bucket, key, initiated, owner, content_type, json.loads(metadata), json.loads(system),
                  algorithm, type_, done, json.loads(result) if result else None)  # fmt: skip


def get_upload(conn: sqlite3.Connection, upload_id: str) -> Upload | None:
    row = conn.execute(f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE upload_id = ?", (upload_id,)).fetchone()
    return None if row is None else _upload(row)


def open_uploads(conn: sqlite3.Connection, bucket: str, prefix: str) -> list[Upload]:
    rows = conn.execute(
        f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE bucket = ? AND completed_at IS NULL"
        " AND substr(key, 1, ?) = ? ORDER BY key, initiated, upload_id",
        (bucket, len(prefix), prefix),
    )
    return [_upload(row) for row in rows]


def bucket_uploads(conn: sqlite3.Connection, bucket: str) -> list[str]:
    return [row[0] for row in conn.execute("SELECT upload_id FROM uploads WHERE bucket = ?", (bucket,))]


def parts(conn: sqlite3.Connection, upload_id: str) -> list[Part]:
    rows = conn.execute(f"SELECT {_PART_COLUMNS} FROM parts WHERE upload_id = ? ORDER BY number", (upload_id,))
    return [Part(*row) for row in rows]


def put_part(conn: sqlite3.Connection, upload_id: str, part: Part) -> str | None:
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


def complete(conn: sqlite3.Connection, upload_id: str, result: str, now: float) -> list[str]:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        file_ids = [row[0] for row in conn.execute("SELECT file_id FROM parts WHERE upload_id = ?", (upload_id,))]
        conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        conn.execute("UPDATE uploads SET completed_at = ?, result = ? WHERE upload_id = ?", (now, result, upload_id))
        conn.execute("DELETE FROM uploads WHERE completed_at IS NOT NULL AND completed_at < ?", (now - COMPLETED_KEPT_SECONDS,))
    return file_ids


def delete_upload(conn: sqlite3.Connection, upload_id: str) -> list[str]:
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        file_ids = [row[0] for row in conn.execute("SELECT file_id FROM parts WHERE upload_id = ?", (upload_id,))]
        conn.execute("DELETE FROM parts WHERE upload_id = ?", (upload_id,))
        conn.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))
    return file_ids


def recover(conn: sqlite3.Connection, now: float) -> None:
    """Forget old completed uploads and parts of uploads that are no longer open."""
    conn.execute("DELETE FROM uploads WHERE completed_at IS NOT NULL AND completed_at < ?", (now - COMPLETED_KEPT_SECONDS,))
    conn.execute("DELETE FROM parts WHERE upload_id NOT IN (SELECT upload_id FROM uploads WHERE completed_at IS NULL)")


def connect(path, *, durable: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    conn.executescript(_SCHEMA)
    return conn
