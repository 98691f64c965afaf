"""Group commit: concurrent writes share their data flush, one SQLite
transaction and one WAL fsync.

Writes hand their jobs to dedicated worker threads and park; a thread takes
everything queued at once as one batch, so under load each flush and each
commit carries many writes, and alone a write pays one of each.  The trio
thread is woken once per batch (``TrioToken.run_sync_soon``), not once per
write and stage: a thread hop costs tens of µs of the event loop's CPU, which
the HTTP side needs.

Durable storage pipelines two threads: the *flusher* writes each job's last
body bytes and makes a batch durable with one flush (``DataFiles.sync_writes``)
-- data must be on disk before the index says it is there -- and passes the
batch to the *committer*, which runs one transaction and COMMIT (the WAL
fsync).  The flush of one batch overlaps the commit of the one before.
Without fsync one thread does both steps.

In the transaction every job's ``apply`` makes at most one changing
statement, so a refused job (e.g. its bucket was just deleted) leaves no
change behind and does not sink the others.  After the COMMIT, ``after`` of
each committed job runs (unlink replaced data files).  A job that fails at any
step has its data file put back (``PendingWrite.discard``).
"""

from __future__ import annotations

import sqlite3
import threading
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
    parked: trio.lowlevel.Task | None = None  # the submitter, waiting for the outcome


def _refuse_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class _Pipe:
    """Hands jobs to one worker thread, which takes all that are queued at once."""

    def __init__(self) -> None:
        self._jobs: list[CommitJob] = []
        self._ready = threading.Condition(threading.Lock())
        self._closed = False

    def put(self, jobs: list[CommitJob]) -> None:
        with self._ready:
            self._jobs += jobs
            self._ready.notify()

    def take(self) -> list[CommitJob] | None:
        """Every queued job (blocking until there is one); None once closed and drained."""
        with self._ready:
            while not self._jobs and not self._closed:
                self._ready.wait()
            batch, self._jobs = self._jobs, []
            return batch or None

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()


class GroupCommitter:
    """Runs CommitJobs against the one writing connection, many per transaction."""

    def __init__(self, conn: sqlite3.Connection, files: DataFiles, token: trio.lowlevel.TrioToken) -> None:
        self._conn = conn
        self._files = files
        self._token = token
        self._inbox = _Pipe()
        self._closed = False
        self.batches = 0
        self.jobs = 0
        if files.durable:
            to_commit = _Pipe()
            self._threads = [
                threading.Thread(target=self._serve, args=(self._inbox, self._write_and_flush, to_commit), daemon=True,
                                 name="storage-flusher"),
                threading.Thread(target=self._serve, args=(to_commit, self._commit_step, None), daemon=True,
                                 name="storage-committer"),
            ]
        else:
            self._threads = [
                threading.Thread(target=self._serve, args=(self._inbox, self._write_and_commit, None), daemon=True,
                                 name="storage-committer")
            ]
        for thread in self._threads:
            thread.start()

    def __repr__(self) -> str:
        return f"GroupCommitter(batches={self.batches}, jobs={self.jobs}, closed={self._closed})"

    async def run(self, job: CommitJob) -> Any:
        """Commit ``job`` together with whatever else is queued; return apply's
        result or raise its error (then nothing of it is visible).

        Not cancellable: once queued, the job may commit either way, so the
        caller must learn the outcome; a cancellation arrives at its next checkpoint.
        """
        if self._closed:
            raise RuntimeError("storage is closed")
        job.parked = trio.lowlevel.current_task()
        self._inbox.put([job])
        # The wake-up comes through run_sync_soon, which cannot run before this task parks.
        await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Finish the queued jobs and stop the threads (blocking: call from a worker thread)."""
        self._closed = True
        self._inbox.close()
        for thread in self._threads:
            thread.join()

    # -- worker threads ----------------------------------------------------------

    def _serve(self, source: _Pipe, step: Callable[[list[CommitJob]], None], then: _Pipe | None) -> None:
        while (batch := source.take()) is not None:
            try:
                step(batch)
            except BaseException as exc:  # a bug: the outcome of these jobs is unknown
                log.error("storage_commit_thread_failed", error=repr(exc), jobs=len(batch))
                for job in batch:
                    if job.error is None:
                        job.error = exc
            if then is not None:
                then.put(batch)
            else:
                self._deliver(batch)
        if then is not None:
            then.close()

    def _deliver(self, batch: list[CommitJob]) -> None:
        try:
            self._token.run_sync_soon(_wake, batch)
        except trio.RunFinishedError:
            log.error("storage_commit_after_shutdown", jobs=len(batch))

    def _commit_step(self, batch: list[CommitJob]) -> None:
        self.batches += 1
        self.jobs += len(batch)
        self._commit_batch([job for job in batch if job.error is None])

    def _write_and_commit(self, batch: list[CommitJob]) -> None:
        self._write_and_flush(batch)
        self._commit_step(batch)

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


def _wake(batch: list[CommitJob]) -> None:
    """In the trio thread: the batch is done, resume its writers."""
    for job in batch:
        if job.parked is not None:
            task, job.parked = job.parked, None
            trio.lowlevel.reschedule(task)
