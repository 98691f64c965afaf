"""Group commit: concurrent writes share one worker-thread hop, one data flush,
one SQLite transaction and one WAL fsync.

There is no background task.  The first writer to arrive becomes the leader:
it takes every job queued so far into one batch and runs it in a worker
thread; writers arriving meanwhile queue up, and when the batch is done the
leader hands the lead to the oldest queued writer, which commits the whole
queue in the next batch.  Under load each hop carries many commits; alone, a
writer pays exactly one hop.  (A trio thread hop costs tens of µs of CPU, a
flush up to milliseconds on a busy disk: both are paid per batch, not per write.)

A job goes through, in worker threads, batched with its neighbours:
  1. write its last body bytes (``PendingWrite.finish_writing``);
  2. make them durable with one flush per batch (``DataFiles.sync_writes``) --
     data must be on disk before the index says it is there;
  3. one transaction with every job's ``apply``; an ``apply`` makes at most one
     changing statement, so a refused job (e.g. its bucket was just deleted)
     leaves no change behind and does not sink the others;
  4. COMMIT (the WAL fsync);
  5. ``after`` of each committed job (unlink replaced data files).
A job that fails at any step has its data file put back (``PendingWrite.discard``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from server.datafiles import DataFiles, PendingWrite

log = structlog.get_logger()


@dataclass(eq=False, slots=True)
class CommitJob:
    """One write's share of a group commit."""

    apply: Callable[[sqlite3.Connection], Any]  # in the batch's transaction: reads, then at most ONE changing statement
    pending: PendingWrite | None = None  # the data file bytes this commit makes visible
    tail: bytes = b""  # the body's last bytes, still to be written
    after: Callable[[Any], None] | None = None  # clean-up once committed, given apply's result (failures are only logged)
    result: Any = None
    error: BaseException | None = None
    done: bool = False  # the current stage has run this job
    parked: trio.lowlevel.Task | None = None  # the submitter, while it waits


def _refuse_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class _Stage:
    """Leader/follower batching of one blocking step: whoever finds the stage
    idle runs everything queued in one worker-thread hop; later arrivals park
    and the oldest of them leads the next batch."""

    def __init__(self, step: Callable[[list[CommitJob]], None]) -> None:
        self._step = step
        self._queue: list[CommitJob] = []
        self._busy = False
        self.batches = 0
        self.jobs = 0

    async def run(self, job: CommitJob) -> None:
        """Run ``job`` through the step (outcome in job.error).  Not cancellable:
        the step may take effect either way, so the caller must learn the outcome."""
        job.done = False
        self._queue.append(job)
        if self._busy:
            # Queueing and parking happen with no checkpoint between: no wake-up is missed.
            job.parked = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
            job.parked = None
        if not job.done:
            await self._lead()

    async def _lead(self) -> None:
        self._busy = True
        batch, self._queue = self._queue, []
        self.batches += 1
        self.jobs += len(batch)
        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._step, batch)
        except BaseException as exc:  # the hop itself failed: nobody's outcome is known
            for job in batch:
                if job.error is None:
                    job.error = exc
            raise
        finally:
            for job in batch:
                job.done = True
                if job.parked is not None:
                    trio.lowlevel.reschedule(job.parked)
            if self._queue:
                follower = self._queue[0].parked
                assert follower is not None
                trio.lowlevel.reschedule(follower)  # hand over the lead
            else:
                self._busy = False


class GroupCommitter:
    """Runs CommitJobs against the one writing connection, many per transaction.

    Durable storage pipelines two stages, each batched on its own: *flush*
    (write the last bytes, one data flush for the batch) and *commit* (one
    transaction + WAL fsync).  The data flush of one group overlaps the WAL
    fsync of the group before it, so a write waits about one flush, not two,
    behind the others.  Without fsync both steps run in one hop.
    """

    def __init__(self, conn: sqlite3.Connection, files: DataFiles) -> None:
        self._conn = conn
        self._files = files
        self._flush = _Stage(self._write_and_flush) if files.durable else None
        self._commit = _Stage(self._commit_batch if files.durable else self._write_and_commit)

    @property
    def batches(self) -> int:
        return self._commit.batches

    @property
    def jobs(self) -> int:
        return self._commit.jobs

    def __repr__(self) -> str:
        return f"GroupCommitter(batches={self._commit.batches}, jobs={self._commit.jobs})"

    async def run(self, job: CommitJob) -> Any:
        """Commit ``job`` together with whatever else is queued; return apply's
        result or raise its error (then nothing of it is visible)."""
        if job.pending is not None and self._flush is not None:
            await self._flush.run(job)
        if job.error is None:
            await self._commit.run(job)
        if job.error is not None:
            raise job.error
        return job.result

    # -- worker thread ---------------------------------------------------------

    def _write_and_commit(self, batch: list[CommitJob]) -> None:
        self._write_and_flush(batch)
        self._commit_batch([job for job in batch if job.error is None])

    def _commit_batch(self, ready: list[CommitJob]) -> None:
        if not ready:
            return
        conn = self._conn
        applied: list[CommitJob] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job in ready:
                try:
                    job.result = job.apply(conn)
                except Exception as exc:
                    # apply makes at most one changing statement, and SQLite backs out a
                    # failed statement while keeping the transaction: the others stand.
                    job.error = exc
                    _discard(job)
                else:
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
                _discard(job)
            return
        for job in applied:
            if job.after is not None:
                try:
                    job.after(job.result)
                except Exception as exc:
                    log.warning("storage_cleanup_failed", error=repr(exc))

    def _write_and_flush(self, batch: list[CommitJob]) -> None:
        written: list[CommitJob] = []
        for job in batch:
            if job.pending is None:
                continue
            try:
                job.pending.finish_writing(job.tail)
            except Exception as exc:
                job.error = exc
                _discard(job)
            else:
                written.append(job)
        if not written:
            return
        try:
            self._files.sync_writes([job.pending for job in written if job.pending is not None])
        except Exception as exc:
            log.error("storage_flush_failed", error=repr(exc), jobs=len(written))
            for job in written:
                job.error = exc
                _discard(job)


def _discard(job: CommitJob) -> None:
    if job.pending is None:
        return
    try:
        job.pending.discard()
    except Exception as exc:
        # What could not be undone stays past the committed length: invisible,
        # overwritten by the next append, truncated at the next start.
        log.error("storage_undo_failed", error=repr(exc), file_id=job.pending.file_id)
