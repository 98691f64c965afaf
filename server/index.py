"""The object index: SQLite in WAL mode, one row per bucket and per object.

Why SQLite: atomic, crash-safe commits of an object's new length together with
its ETag and CRC, and keys kept sorted for listing.  ``objects`` is a WITHOUT
ROWID table keyed by (bucket, key); TEXT under the default BINARY collation
compares the UTF-8 bytes with memcmp (https://www.sqlite.org/datatype3.html,
"Collating Sequences"), which is exactly S3's listing order.

Everything here is synchronous and takes the connection as an argument: the
storage calls it from worker threads, writes only from the group committer.

An append whose data was not flushed before its commit (``server.committer``:
one device flush after the commit covers both) keeps the object's previous
state in the ``prev_*`` columns, so start-up recovery can check the appended
bytes against the new CRC32 and, if they did not reach the disk, put the row
back (``unflushed_appends``, ``roll_back_appends``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from server.appended_rows import (  # noqa: F401 -- has_appended_row .. update_appended_rows: part of this module's API
    NO_PREV as _NO_PREV,
    PREV_COLUMNS as _PREV_COLUMNS,
    connect_appender,
    has_appended_row,
    roll_back_appends,
    update_appended_rows,
)
from server.errors import BucketAlreadyExists, BucketAlreadyOwnedByYou, BucketNotEmpty, NoSuchBucket
from server.records import ObjectInfo, StoredChecksum

SCHEMA_VERSION = 3  # 2: objects.checksum, buckets.owner; 3: objects.prev_* (added to an older index on open)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    owner TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL REFERENCES buckets(name),
    key TEXT NOT NULL,
    file_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    content_type TEXT,
    metadata TEXT NOT NULL,
    system TEXT NOT NULL,
    crc32 INTEGER,
    appends INTEGER NOT NULL,
    checksum TEXT,
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;
"""

_OBJECT_COLUMNS = "bucket, key, file_id, size, etag, last_modified, content_type, metadata, system, crc32, appends, checksum"
# Columns added since schema version 1: (table, column, declaration), added on open.
_ADDED_COLUMNS = (
    ("objects", "checksum", "TEXT"), ("buckets", "owner", "TEXT"),
    *(("objects", f"prev_{name}", declaration) for name, declaration in _PREV_COLUMNS),
)  # fmt: skip


@dataclass(slots=True)
class IndexedObject:
    """An object's row: its public info plus the data file holding its bytes.
    Treated as immutable, but not frozen (see ObjectInfo): one is made per append."""

    info: ObjectInfo
    file_id: str


def connect(path: Path, *, durable: bool, readonly: bool = False, flushed_after_commit: bool = False) -> sqlite3.Connection:
    """Open the index.  ``durable`` = fsync the WAL at every commit (synchronous=FULL);
    otherwise synchronous=NORMAL: a commit survives a process crash but not
    necessarily a power loss (https://www.sqlite.org/pragma.html#pragma_synchronous).
    ``flushed_after_commit``: NORMAL even when durable, because the caller flushes
    the WAL's filesystem after every commit (NORMAL still syncs around checkpoints,
    so the database file is never corrupted).

    Connections are handed between worker threads (check_same_thread=False); the
    storage guarantees one thread uses a connection at a time.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=64)
    conn.execute("PRAGMA busy_timeout = 10000")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
        return conn
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable and not flushed_after_commit else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = ON")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, 1, 2, SCHEMA_VERSION):
        conn.close()
        raise RuntimeError(f"index {path} has schema version {version}, this server knows {SCHEMA_VERSION}")
    conn.executescript(_SCHEMA)
    for table, column, declaration in _ADDED_COLUMNS:
        if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return conn


class ReadConnections:
    """One read-only connection per worker thread: WAL readers never block the
    writer, and a sqlite3 connection must not be used by two threads at once."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        """This thread's connection (call from worker threads only)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self._path, durable=False, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close them all; only when no read is running."""
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


# -- buckets -----------------------------------------------------------------


def load_buckets(conn: sqlite3.Connection) -> dict[str, float]:
    return dict(conn.execute("SELECT name, created FROM buckets"))


def insert_bucket(conn: sqlite3.Connection, name: str, created: float, owner: str | None = None) -> None:
    try:
        conn.execute("INSERT INTO buckets (name, created, owner) VALUES (?, ?, ?)", (name, created, owner))
    except sqlite3.IntegrityError as exc:
        existing = bucket_owner(conn, name)
        if owner is not None and existing is not None and existing != owner:
            raise BucketAlreadyExists(resource=name, BucketName=name) from exc
        raise BucketAlreadyOwnedByYou(resource=name, BucketName=name) from exc


def bucket_owner(conn: sqlite3.Connection, name: str) -> str | None:
    """The access key that created the bucket (None: unknown, made before owners were kept)."""
    row = conn.execute("SELECT owner FROM buckets WHERE name = ?", (name,)).fetchone()
    return None if row is None else row[0]


def delete_bucket(conn: sqlite3.Connection, name: str) -> None:
    if conn.execute("SELECT 1 FROM buckets WHERE name = ?", (name,)).fetchone() is None:
        raise NoSuchBucket(resource=name, BucketName=name)
    if conn.execute("SELECT 1 FROM objects WHERE bucket = ? LIMIT 1", (name,)).fetchone() is not None:
        raise BucketNotEmpty(resource=name, BucketName=name)
    conn.execute("DELETE FROM buckets WHERE name = ?", (name,))


# -- objects -----------------------------------------------------------------


def get_object(conn: sqlite3.Connection, bucket: str, key: str) -> IndexedObject | None:
    row = conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND key = ?", (bucket, key)).fetchone()
    return None if row is None else _indexed(row)


def list_objects(
    conn: sqlite3.Connection, bucket: str, *, prefix: str, start_after: str, limit: int
) -> list[ObjectInfo]:
    """Keys > start_after that start with prefix, in UTF-8 byte order, at most limit.

    Both bounds are range conditions on the primary key, so a page costs
    O(log n + limit) however many keys precede or follow it.
    """
    if limit <= 0:
        return []
    if start_after >= prefix:
        where, args = "key > ?", [start_after]
    else:
        where, args = "key >= ?", [prefix]
    upper = prefix_upper_bound(prefix)
    if upper is not None:
        where += " AND key < ?"
        args.append(upper)
    rows = conn.execute(
        f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE bucket = ? AND {where} ORDER BY key LIMIT ?",
        (bucket, *args, limit),
    ).fetchall()
    return [_indexed(row).info for row in rows]


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``
    (None when there is none: the empty prefix or one of only U+10FFFF).

    Code point order equals UTF-8 byte order, so this bound is valid for SQLite.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last == 0x10FFFF:
            continue
        nxt = last + 1
        if 0xD800 <= nxt <= 0xDFFF:  # surrogates never occur in UTF-8 text
            nxt = 0xE000
        return "".join(chars) + chr(nxt)
    return None


def put_object(conn: sqlite3.Connection, info: ObjectInfo, file_id: str) -> None:
    """Create or replace an object's row (plain PUT, create-by-append)."""
    try:
        conn.execute(
            f"INSERT INTO objects ({_OBJECT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (bucket, key) DO UPDATE SET file_id = excluded.file_id, size = excluded.size,"
            " etag = excluded.etag, last_modified = excluded.last_modified, content_type = excluded.content_type,"
            " metadata = excluded.metadata, system = excluded.system, crc32 = excluded.crc32,"
            " appends = excluded.appends, checksum = excluded.checksum, "
            + _NO_PREV,
            (
                info.bucket,
                info.key,
                file_id,
                info.size,
                info.etag,
                info.last_modified,
                info.content_type,
                json.dumps(info.metadata, ensure_ascii=False),
                json.dumps(info.system, ensure_ascii=False),
                info.crc32,
                info.appends,
                None if info.checksum is None else info.checksum.encode(),
            ),
        )
    except sqlite3.IntegrityError as exc:  # the bucket went away (foreign key)
        raise NoSuchBucket(resource=info.bucket, BucketName=info.bucket) from exc


def appended_row(info: ObjectInfo, file_id: str) -> tuple:
    """An append's new values, in the order ``update_appended_rows`` takes them."""
    checksum = None if info.checksum is None else info.checksum.encode()
    return (info.size, info.etag, info.last_modified, info.crc32, info.appends, checksum, info.bucket, info.key, file_id)


def update_appended(conn: sqlite3.Connection, info: ObjectInfo, file_id: str) -> None:
    """Record an append: only the columns an append changes."""
    if update_appended_rows(conn, [(*appended_row(info, file_id), False)]) != 1:
        # The storage's per-object lock makes this impossible; refuse rather than guess.
        raise RuntimeError(f"append to {info.bucket}/{info.key} found no row for data file {file_id}")


def unflushed_appends(conn: sqlite3.Connection) -> list[tuple[str, str, str, int, int, int, int]]:
    """(bucket, key, file id, size, crc32, previous size, previous crc32) of every
    object whose last append was committed before its bytes were flushed."""
    return conn.execute(
        "SELECT bucket, key, file_id, size, coalesce(crc32, 0), prev_size, coalesce(prev_crc32, 0) FROM objects"
        " WHERE prev_size IS NOT NULL"
    ).fetchall()


def forget_previous_states(conn: sqlite3.Connection) -> None:
    """Clear every kept previous state: the appends they guard are known to be on disk."""
    conn.execute(f"UPDATE objects SET {_NO_PREV} WHERE prev_size IS NOT NULL")


def delete_object(conn: sqlite3.Connection, bucket: str, key: str) -> str | None:
    """Remove an object's row; returns its data file id (None if there was none)."""
    row = conn.execute("DELETE FROM objects WHERE bucket = ? AND key = ? RETURNING file_id", (bucket, key)).fetchone()
    return None if row is None else row[0]


def stats(conn: sqlite3.Connection) -> tuple[int, int]:
    count, total = conn.execute("SELECT count(*), coalesce(sum(size), 0) FROM objects").fetchone()
    return count, total


def all_objects(conn: sqlite3.Connection) -> list[IndexedObject]:
    """Every row, for start-up recovery."""
    return [_indexed(row) for row in conn.execute(f"SELECT {_OBJECT_COLUMNS} FROM objects")]


def _indexed(row: tuple) -> IndexedObject:
    bucket, key, file_id, size, etag, last_modified, content_type, metadata, system, crc32, appends, checksum = row
    info = ObjectInfo(
        bucket=bucket,
        key=key,
        size=size,
        etag=etag,
        last_modified=last_modified,
        content_type=content_type,
        metadata=json.loads(metadata),
        system=json.loads(system),
        crc32=crc32 if crc32 is not None else 0,
        appends=appends,
        checksum=StoredChecksum.decode(checksum),
    )
    return IndexedObject(info=info, file_id=file_id)
