"""A write's share of a group commit (``CommitJob``), a batch of them committed in
one SQLite transaction, and how each job's outcome is set and its writer resumed.

The committer's stages (``server.committer``) run these in their threads; the
jobs of one batch are for distinct objects (each writer holds its object's lock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from server.appended_rows import record_appends
from server.datafiles import PendingWrite

log = structlog.get_logger()


@dataclass(eq=False, slots=True)
class CommitJob:
    """One write's share of a group commit: either ``apply`` or ``appended``."""

    apply: Callable[[sqlite3.Connection], Any] | None = None  # in the batch's transaction: reads, then at most ONE changing statement
    appended: tuple | None = None  # an append's new row (``index.appended_row``), committed with the batch's other appends
    pending: PendingWrite | None = None  # the data file bytes this commit makes visible
    tail: bytes = b""  # the body's last bytes, still to be written
    after: Callable[[Any], None] | None = None  # clean-up once committed, given apply's result (failures are only logged)
    result: Any = None
    error: BaseException | None = None
    parked: trio.lowlevel.Task | None = None  # the submitter, waiting for the outcome
    unflushed: bool = False  # an append whose bytes are written, not flushed: the flush after the commit covers them


def commit_batch(conn: sqlite3.Connection, ready: list[CommitJob]) -> list[CommitJob]:
    """The jobs committed; the others are refused."""
    if not ready:
        return []
    appends = [job for job in ready if job.appended is not None]
    others = [job for job in ready if job.appended is None]
    committed: list[CommitJob] = []
    try:
        if not others:  # only appends: their one statement is a transaction of its own
            committed = apply_appends(conn, appends)
        else:
            conn.execute("BEGIN IMMEDIATE")
            for job in others:
                try:
                    assert job.apply is not None
                    job.result = job.apply(conn)
                except Exception as exc:
                    # apply makes at most one changing statement, and SQLite backs out a
                    # failed statement while keeping the transaction: the others stand.
                    job.error = exc
                    discard(job)
                else:
                    committed.append(job)
            if appends:
                try:
                    committed += apply_appends(conn, appends)
                except sqlite3.Error as exc:  # backed out; the transaction and the others stand
                    refuse(appends, exc)
            conn.execute("COMMIT")
    except BaseException as exc:
        log.error("storage_commit_failed", error=repr(exc), jobs=len(ready))
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error as rollback_exc:
                log.error("storage_rollback_failed", error=repr(rollback_exc))
        refuse([job for job in ready if job.error is None], exc)
        return []
    return committed

def apply_appends(conn: sqlite3.Connection, appends: list[CommitJob]) -> list[CommitJob]:
    """One UPDATE for all; the jobs whose row it changed.  Raises sqlite3.Error
    when the statement fails (then it changed nothing)."""
    if not appends:
        return []
    rows = [(*job.appended, job.unflushed) for job in appends]  # type: ignore[misc]
    done = []
    for job, landed in zip(appends, record_appends(conn, rows)):
        if landed:
            done.append(job)
        else:
            refuse([job], RuntimeError(f"append to {job.appended[6]}/{job.appended[7]} found no row for its data file"))  # type: ignore[index]
    return done


def write_unflushed(batch: list[CommitJob]) -> None:
    """Write the last bytes of the jobs that skipped the flusher."""
    for job in batch:
        if job.unflushed and job.error is None:
            try:
                job.pending.finish_writing(job.tail)  # type: ignore[union-attr]
            except Exception as exc:
                job.error = exc
                discard(job)


def run_after(committed: list[CommitJob]) -> None:
    """Clean-ups of committed (and durable) jobs: unlink replaced data files."""
    for job in committed:
        if job.after is not None:
            try:
                job.after(job.result)
            except Exception as exc:
                log.warning("storage_cleanup_failed", error=repr(exc))


def fail_all(batch: list[CommitJob], exc: BaseException) -> None:
    log.error("storage_commit_thread_failed", error=repr(exc), jobs=len(batch))
    for job in batch:
        if job.error is None:
            job.error = exc


def refuse(jobs: list[CommitJob], exc: BaseException) -> None:
    for job in jobs:
        job.error = exc
        discard(job)


def discard(job: CommitJob) -> None:
    if job.pending is None:
        return
    try:
        job.pending.discard()
    except Exception as exc:
        # What could not be undone stays past the committed length: invisible,
        # overwritten by the next append, truncated at the next start.
        log.error("storage_undo_failed", error=repr(exc), file_id=job.pending.file_id)


def wake(batch: list[CommitJob]) -> None:
    """In the trio thread: the batch is done, resume its writers."""
    for job in batch:
        if job.parked is not None:
            task, job.parked = job.parked, None
            trio.lowlevel.reschedule(task)
