"""Group commit: concurrent writes share one worker-thread hop, one SQLite
transaction and one WAL fsync.

There is no background task.  The first writer to arrive becomes the leader:
it takes every job queued so far into one batch and runs it in a worker
thread; writers arriving meanwhile queue up, and when the batch is done the
leader hands leadership to the oldest queued writer, which commits the whole
queue in the next batch.  So under load each hop carries many commits; alone,
a writer pays exactly one hop.

A batch, in the worker thread:
  1. ``prepare`` every job (write the last body bytes, fdatasync the data file;
     in parallel threads when several jobs have file work) -- a failing job is
     undone and left out;
  2. one transaction: each job's ``apply`` under its own SAVEPOINT, so one
     refused job (e.g. its bucket was just deleted) does not sink the others;
  3. COMMIT (the WAL fsync) -- if it fails, every job is undone;
  4. ``after`` of each committed job (unlink replaced data files).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

log = structlog.get_logger()


@dataclass(eq=False)
class CommitJob:
    """One write's share of a group commit."""

    apply: Callable[[sqlite3.Connection], Any]  # index changes, inside the batch's transaction
    prepare: Callable[[], None] | None = None  # file work that must be durable before the commit
    undo: Callable[[], None] | None = None  # reverts ``prepare`` when the job does not commit
    after: Callable[[Any], None] | None = None  # clean-up once committed, given apply's result (failures are only logged)
    result: Any = None
    error: BaseException | None = None
    finished: bool = False
    wakeup: trio.Event = field(default_factory=trio.Event)


class GroupCommitter:
    """Runs CommitJobs against the one writing connection, many per transaction."""

    def __init__(self, conn: sqlite3.Connection, *, prepare_threads: int = 8) -> None:
        self._conn = conn
        self._queue: list[CommitJob] = []
        self._busy = False
        self._pool = ThreadPoolExecutor(prepare_threads, "storage-prepare") if prepare_threads > 1 else None
        self.batches = 0
        self.jobs = 0

    def __repr__(self) -> str:
        return f"GroupCommitter(queued={len(self._queue)}, busy={self._busy}, batches={self.batches}, jobs={self.jobs})"

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def run(self, job: CommitJob) -> Any:
        """Commit ``job`` (with whatever else is queued); return its result or raise its error.

        Shielded from cancellation: once queued, a job's outcome must be known
        before the caller lets go of the object (the commit may happen anyway).
        """
        self._queue.append(job)
        with trio.CancelScope(shield=True):
            if self._busy:
                await job.wakeup.wait()
            if not job.finished:  # we lead the next batch
                self._busy = True
                batch, self._queue = self._queue, []
                try:
                    await trio.to_thread.run_sync(self._run_batch, batch)
                except BaseException as exc:  # the hop itself failed; nobody's outcome is known
                    for other in batch:
                        if not other.finished and other.error is None:
                            other.error = exc
                    raise
                finally:
                    for other in batch:
                        other.finished = True
                        other.wakeup.set()
                    if self._queue:
                        self._queue[0].wakeup.set()  # hand over leadership
                    else:
                        self._busy = False
        if job.error is not None:
            raise job.error
        return job.result

    # -- worker thread ---------------------------------------------------------

    def _run_batch(self, batch: list[CommitJob]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        ready = self._prepare_all(batch)
        if not ready:
            return
        conn = self._conn
        applied: list[CommitJob] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in ready:
                conn.execute("SAVEPOINT job")
                try:
                    job.result = job.apply(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    job.error = exc
                    _undo(job)
                else:
                    conn.execute("RELEASE job")
                    applied.append(job)
            conn.execute("COMMIT")
        except BaseException as exc:
            log.error("storage_commit_failed", error=repr(exc), jobs=len(applied))
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback_exc:
                    log.error("storage_rollback_failed", error=repr(rollback_exc))
            for job in applied:
                job.error = exc
                _undo(job)
            return
        for job in applied:
            if job.after is not None:
                try:
                    job.after(job.result)
                except Exception as exc:
                    log.warning("storage_cleanup_failed", error=repr(exc))

    def _prepare_all(self, batch: list[CommitJob]) -> list[CommitJob]:
        with_files = [job for job in batch if job.prepare is not None]
        if self._pool is not None and len(with_files) > 1:
            # fdatasyncs of different files overlap well on real disks.
            list(self._pool.map(_prepare, with_files))
        else:
            for job in with_files:
                _prepare(job)
        return [job for job in batch if job.error is None]


def _prepare(job: CommitJob) -> None:
    assert job.prepare is not None
    try:
        job.prepare()
    except Exception as exc:
        job.error = exc
        _undo(job)


def _undo(job: CommitJob) -> None:
    if job.undo is None:
        return
    try:
        job.undo()
    except Exception as exc:
        # What could not be undone stays past the committed length: invisible,
        # overwritten by the next append, truncated at the next start.
        log.error("storage_undo_failed", error=repr(exc))
