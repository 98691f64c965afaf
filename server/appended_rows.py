"""The index rows of appends: record them, check them, put them back.

The SQL an append needs, apart from ``server.index`` because the commit process
(``server.commit_child``) runs it too, and imports nothing heavier than sqlite3:
its interpreter stays small (~12 MiB instead of ~35).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# The object's state before its last append, kept only while that append's bytes are unverified
# (committed before they were flushed); NULL otherwise.
PREV_COLUMNS = (("size", "INTEGER"), ("etag", "TEXT"), ("last_modified", "REAL"), ("crc32", "INTEGER"),
                ("appends", "INTEGER"), ("checksum", "TEXT"))
NO_PREV = ", ".join(f"prev_{name} = NULL" for name, _ in PREV_COLUMNS)  # a new data file: nothing to check


def connect_appender(path: Path) -> sqlite3.Connection:
    """A second writing connection, for the commit process (``server.commit_child``):
    the index is open and migrated already, and every commit is followed by a flush
    of its filesystem (so synchronous=NORMAL, as ``connect(flushed_after_commit=True)``)."""
    conn = sqlite3.connect(path, isolation_level=None, cached_statements=64)
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


_APPEND_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_MAX_APPEND_ROWS = 500  # 10 parameters each, far below SQLite's 32766
_update_sql: dict[int, str] = {}
# Keep the row's previous state (read before the SET: SQLite evaluates every expression on the old row)
# when the append is unflushed (v.column10), else clear it.
_KEEP_PREV = ", ".join(f"prev_{name} = CASE WHEN v.column10 THEN objects.{name} END" for name, _ in PREV_COLUMNS)


def update_appended_rows(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    """Record many appends (``appended_row`` tuples, distinct objects, each with one
    more value: True when its bytes are not flushed yet, so the row keeps its previous
    state for recovery to check) with one UPDATE per 500; returns how many rows changed.

    Why one statement: it is one call into SQLite, and the committing thread
    gives up and takes back the GIL once per call, which costs the event loop
    more than the update itself.  A row changes only if the object still has
    that data file.
    """
    changed = 0
    for start in range(0, len(rows), _MAX_APPEND_ROWS):
        chunk = rows[start:start + _MAX_APPEND_ROWS]
        sql = _update_sql.get(len(chunk))
        if sql is None:
            sql = _update_sql[len(chunk)] = (
                "UPDATE objects SET size = v.column1, etag = v.column2, last_modified = v.column3, crc32 = v.column4,"
                f" appends = v.column5, checksum = v.column6, {_KEEP_PREV}"
                f" FROM (VALUES {', '.join([_APPEND_ROW] * len(chunk))}) AS v"
                " WHERE objects.bucket = v.column7 AND objects.key = v.column8 AND objects.file_id = v.column9"
            )
        changed += conn.execute(sql, [value for row in chunk for value in row]).rowcount
    return changed


def record_appends(conn: sqlite3.Connection, rows: list[tuple]) -> list[bool]:
    """``update_appended_rows``, then whether each row landed: all do, unless an
    object no longer has that data file (impossible under the server's per-object
    locks; such a row is found and refused alone).  Raises sqlite3.Error when the
    statement fails (then it changed nothing)."""
    if update_appended_rows(conn, rows) == len(rows):
        return [True] * len(rows)
    return [has_appended_row(conn, row) for row in rows]


def has_appended_row(conn: sqlite3.Connection, row: tuple) -> bool:
    """Whether the index holds this append (``appended_row``): its data file and ETag."""
    etag, bucket, key, file_id = row[1], row[6], row[7], row[8]
    found = conn.execute(
        "SELECT 1 FROM objects WHERE bucket = ? AND key = ? AND file_id = ? AND etag = ?", (bucket, key, file_id, etag)
    ).fetchone()
    return found is not None


def roll_back_appends(conn: sqlite3.Connection, objects: list[tuple[str, str, str]]) -> None:
    """Put each (bucket, key, file id)'s row back to its state before its last,
    unflushed append (one statement per row; recovery and failed flushes only)."""
    restore = ", ".join(f"{name} = prev_{name}" for name, _ in PREV_COLUMNS)
    conn.executemany(
        f"UPDATE objects SET {restore}, {NO_PREV}"
        " WHERE bucket = ? AND key = ? AND file_id = ? AND prev_size IS NOT NULL",
        objects,
    )
