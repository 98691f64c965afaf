"""Group commit: concurrent writes share their data flush, one SQLite
transaction and one WAL fsync.

Writes hand their jobs to a dedicated worker thread and park; the thread takes
everything queued at once as one batch, so under load each flush and each
commit carries many writes, and alone a write pays one of each.  The
hand-overs follow the turns of the event loop (``_TurnHandOver``): a turn's
jobs go to the worker together just before the loop checks for I/O, and the
writers of finished batches are resumed just after it; only an event loop that
may be asleep is woken through ``TrioToken.run_sync_soon``.

A batch goes through these stages, each its own thread(s), in order:

1. the flusher writes each job's last body bytes and makes them durable with
   one flush (``DataFiles.sync_writes``) -- data must be on disk before the
   index says it is there -- except small appends, which skip it (below);
2. the indexer runs one transaction and COMMIT (the WAL fsync) for every
   flushed batch waiting, then runs ``after`` of each committed job (unlink
   replaced data files), and resumes the writers -- or, for a batch with small
   appends, hands it to
3. a syncer (``SYNCERS`` threads), which runs ``flush_after_commit``, then the
   ``after`` clean-ups, and resumes the writers.

Small appends skip all three when there is a commit process
(``server.commit_process``): it writes their bytes, commits them with its own
connection and flushes, in a process of its own, so with no share of the GIL;
batches go to it as soon as ``HAND_OVER_AT`` are in, mid-turn.  If it ends,
its unanswered appends are settled here (``_settle_lost``), small appends go
through the stages above, and a new process starts (unless the one that ended
ran less than ``RESTART_AFTER``).

One flush for small appends: given ``flush_after_commit`` (one syncfs of the
filesystem holding the index and the data files, the WAL at synchronous=NORMAL),
an append of at most ``UNFLUSHED_MAX`` bytes skips the flusher: the indexer
writes its bytes and commits, and one flush after the commit (a syncer's) makes
both durable before the writer is resumed.  A crash before the flush may leave
the commit on disk without the bytes, so such a commit keeps the object's
previous state in the index (``index.update_appended_rows``) and start-up
recovery checks the appended bytes against the new CRC32, putting the row back
when they differ (``server.recovery``).  Several batches may await their flush
at once, but an object is in one batch at a time (its writer holds the object's
lock until the outcome), so only its last append can be unverified.  Measured with 16 connections of 1 KiB
appends: two device flushes per batch (~0.5-1 ms each here) were most of an
append's wait for its commit while the event loop sat idle.

Why two stages: each waits on the disk (a flush, then the WAL's fsync: ~1-3 ms
each here), and with one thread a batch's data flush waited for the whole
previous batch, index commit included.  With a fixed number of writers in
flight (16 connections appending) that wait was most of an append's time:
the event loop sat idle.  Now batch k+1's data flushes while batch k's index
commits.  Measured with 16 connections of 1 KiB appends, alternating rounds
against the single-thread committer in the same run on this (loaded) machine:
993 -> 1,180 and 1,264 -> 1,726 appends/s, the event loop's CPU per append
lower too (fewer idle wake-ups).  Nothing about durability changes: a batch's
index commit starts only after its data flush, and an object is in at most
one batch at a time (its writer holds the object's lock until the outcome).

Why appends share one statement: a worker holds the GIL between its blocking
calls, and every time it takes the GIL back while the trio thread is busy,
the trio thread stalls and both switch (measured: ~10-15 µs of the trio
thread's CPU per hand-over, more than the work itself).  So a batch makes as
few separate trips out of Python as it can: one wake-up, one write per job,
one flush, one SQL statement for all its appends (in autocommit that
statement is the whole transaction), one wake-up of trio.

In a transaction every other job's ``apply`` makes at most one changing
statement, so a refused job (e.g. its bucket was just deleted) leaves no
change behind and does not sink the others; the appends' statement changes
only rows that exist with the job's data file (the per-object lock makes a
miss impossible; one is refused like a failed ``apply``).  A job that fails
at any step has its data file put back (``PendingWrite.discard``).

Where a batch's time goes (16 connections of 1 KiB appends, one batch of ~16
per cycle, medians of ~900 batches, timestamps taken in each stage): the
hand-over's put ~30 µs on the loop; the indexer running ~100 µs after it; the
bytes' pwrites ~90 µs; the UPDATE ~200 µs; the syncer running ~40 µs later;
syncfs ~620 µs; the writers resumed on the loop ~100 µs after it: ~1.3 ms.
Between resuming a batch's writers and handing over the next batch the loop
works ~4.5 ms (~280 µs per append): its CPU, not this cycle, is ~78% of an
append's period.  Tried, and no gain measured in alternating rounds against
HEAD (per-round noise here is +-10-15%; 12-24 rounds): the indexer running
the flush itself when no batch waits (0.93x: a batch that comes meanwhile
waits for the whole syncfs), the loop writing a small append's bytes before
parking (+27 µs of loop CPU per append, 0.93x), the request log written only
when the loop sleeps and before the hand-over (1.07x twice in a fixed order,
then 0.98x and 0.99x against HEAD in rotated order, HEAD against itself
0.95-0.98x), request lines and metrics rendered when the loop sleeps (1.00x),
waking the indexer by a pipe write that lets go of the GIL first (the cycle
unchanged).
"""

from __future__ import annotations

import collections
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import structlog
import trio

from server import index
from server.batch_pipe import BatchPipe
from server.commit_jobs import CommitJob, commit_batch, discard, fail_all, refuse, run_after, wake, write_unflushed
from server.commit_process import HAND_OVER_AT, CommitProcess
from server.datafiles import DataFiles, PendingWrite

log = structlog.get_logger()

RESTART_AFTER = 60.0  # seconds a commit process must have run for a new one to replace it when it ends
UNFLUSHED_MAX = 1024 * 1024  # an append up to this size is flushed after its commit: recovery reads it back
SYNCERS = 2  # flushes after commits that may run at once (batches in flight between commit and flush)


def _refuse_abort(_: Any) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


class GroupCommitter:
    """Runs CommitJobs against the one writing connection, many per transaction."""

    def __init__(
        self, conn: sqlite3.Connection, files: DataFiles, token: trio.lowlevel.TrioToken,
        flush_after_commit: Callable[[list[PendingWrite]], None] | None = None, lock_fd: int | None = None,
    ) -> None:  # fmt: skip
        """Call it in the trio run the jobs come from (it hooks into that run's turns).
        ``flush_after_commit``: makes every commit durable (``conn`` does not fsync its
        WAL) and the given unflushed writes with it; None: each commit is durable itself.
        ``lock_fd`` (the data dir's lock), with ``flush_after_commit``: small appends
        go to a commit process (``server.commit_process``), which holds the lock too."""
        self._conn = conn
        self._files = files
        self._token = token
        self._flush_after_commit = flush_after_commit
        self._inbox = BatchPipe[CommitJob]()
        self._closed = False
        self.batches = 0
        self.jobs = 0
        self.flush_failures = 0  # commits put back after a reader may have seen them (a failed flush after the commit)
        self._outbox: list[CommitJob] = []  # submitted during this turn of the event loop
        self._done: collections.deque[list[CommitJob]] = collections.deque()  # finished batches, writers parked
        self._loop_may_sleep = False  # the event loop is in (or entering) an I/O wait that may block
        self._turns: _TurnHandOver | None = _TurnHandOver(self)
        trio.lowlevel.add_instrument(self._turns)
        self._flushed = BatchPipe[CommitJob]()  # batches whose data is durable, for the indexer
        # Committed batches whose flush is still to come, for the syncers; None ends one.
        self._syncing: queue.SimpleQueue[tuple[list[CommitJob], list[CommitJob]] | None] = queue.SimpleQueue()
        self._syncers = SYNCERS if flush_after_commit is not None else 0
        self._conn_lock = threading.Lock()  # the indexer's commits and a syncer's roll-back share the connection
        self._threads = [
            threading.Thread(target=self._flush_batches, daemon=True, name="storage-flusher"),
            threading.Thread(target=self._index_batches, daemon=True, name="storage-indexer"),
            *(threading.Thread(target=self._sync_batches, daemon=True, name=f"storage-syncer-{n}")
              for n in range(self._syncers)),
        ]  # fmt: skip
        for thread in self._threads:
            thread.start()
        self._process: CommitProcess | None = None
        self._process_args = (files.root.parent, lock_fd) if flush_after_commit is not None and lock_fd is not None else None
        self._start_process()

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
        pending = job.pending
        if self._flush_after_commit is not None and job.appended is not None and pending is not None \
                and job.appended[0] - pending.base <= UNFLUSHED_MAX:  # appended[0]: the object's new size
            job.unflushed = True
        if self._turns is not None:
            self._outbox.append(job)  # handed over with the rest of this turn's, before the loop's I/O wait
            if len(self._outbox) >= HAND_OVER_AT and self._process is not None and self._process.alive:
                self._hand_over()  # the process needs no GIL: it commits while this turn goes on
        else:
            self._send([job])
        # The wake-up comes from this thread, which cannot run it before this task parks.
        await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
        if job.error is not None:
            raise job.error
        return job.result

    async def detach(self) -> None:
        """Leave the event loop's turns (in the trio thread, before ``close``): jobs
        are handed over at once and writers woken through ``run_sync_soon``; the
        commit process ends (call it once no job is in flight)."""
        if self._turns is not None:
            try:
                trio.lowlevel.remove_instrument(self._turns)
            except KeyError:
                pass  # trio drops an instrument whose hook raised (and logs it)
            self._turns = None
            self._hand_over()
            self._wake_finished()
        if self._process is not None:
            await self._process.aclose()

    def close(self) -> None:
        """Finish the queued jobs and stop the thread (blocking: call from a worker thread)."""
        self._closed = True
        self._inbox.close()  # the flusher then closes the indexer's pipe
        for thread in self._threads:
            thread.join()

    # -- the event loop's side ---------------------------------------------------

    def _hand_over(self) -> None:
        """The jobs of this turn go to the worker together: one wake-up of it, and one batch."""
        if self._outbox:
            jobs, self._outbox = self._outbox, []
            self._send(jobs)

    def _send(self, jobs: list[CommitJob]) -> None:
        """Jobs whose bytes are flushed after their commit skip the flusher: the indexer
        writes them (one thread's wake-up per batch, not two).  Their objects are in no
        other batch, so passing the flusher's batches changes nothing for them."""
        later = [job for job in jobs if job.unflushed] if self._flush_after_commit is not None else []
        if later:
            if self._process is None or not self._process.alive or not self._to_process(later):
                self._flushed.put(later)
            if len(later) == len(jobs):
                return
            jobs = [job for job in jobs if not job.unflushed]
        self._inbox.put(jobs)

    def _start_process(self) -> None:
        if self._process_args is not None:
            try:
                self._process = CommitProcess(*self._process_args, self._answered, self._settle_lost)
            except OSError as exc:
                log.warning("storage_commit_process_failed", error=repr(exc))

    def _to_process(self, jobs: list[CommitJob]) -> bool:
        """Send small appends to the commit process; False if they could not go."""
        try:
            items = []
            for job in jobs:
                pending = job.pending
                assert pending is not None and job.appended is not None
                tail = job.tail if type(job.tail) is bytes else bytes(job.tail)  # AppendObjects' items are views
                items.append((self._files.path(pending.file_id), pending.base + pending.written, tail, job.appended))
            self._process.send(jobs, items)  # type: ignore[union-attr]
        except Exception as exc:  # a bug: the threads commit these
            log.error("storage_commit_process_send_failed", error=repr(exc), jobs=len(jobs))
            return False
        for job in jobs:  # the child writes the tails: as finish_writing would have
            pending = job.pending
            pending.written += len(job.tail)  # type: ignore[union-attr]
            pending.touched = True  # type: ignore[union-attr]
        self.batches += 1
        self.jobs += len(jobs)
        return True

    def _answered(self, job: CommitJob, error: str | None) -> None:
        """The commit process's outcome of ``job``: resume its writer."""
        if error is not None:
            bucket, key, file_id = job.appended[6:9]  # type: ignore[index]
            log.error("storage_commit_failed", error=error, bucket=bucket, key=key, file_id=file_id)
            self.flush_failures += 1  # its commit may have been visible before the child put it back
            refuse([job], OSError(error))
        wake([job])

    async def _settle_lost(self, jobs: list[CommitJob]) -> None:
        """The commit process ended with ``jobs`` unanswered: the threads commit small
        appends meanwhile, and these are settled here.  Its writes and commits are
        all done, so one flush makes them durable, and then a job whose row the
        index holds has landed; any other is put back.  If the flush fails, none has.
        Then a new process starts, unless the one that ended ran less than
        ``RESTART_AFTER`` (one that cannot run is not started again and again)."""
        ended, self._process = self._process, None

        def settle() -> None:
            with self._conn_lock:
                landed = [job for job in jobs if index.has_appended_row(self._conn, job.appended)]  # type: ignore[arg-type]
                refuse([job for job in jobs if job not in landed], OSError("the commit process ended before this append's commit"))
                try:
                    self._flush_after_commit([job.pending for job in landed])  # type: ignore[misc]
                except Exception as exc:  # only the rows found: an object's earlier append keeps its state too
                    log.error("storage_flush_failed", error=repr(exc), jobs=len(landed))
                    self.flush_failures += 1
                    index.roll_back_appends(self._conn, [job.appended[6:9] for job in landed])  # type: ignore[index]
                    refuse(landed, exc)

        if jobs:
            try:
                await trio.to_thread.run_sync(settle)
            except BaseException as exc:  # a bug, or the index unreadable: the outcome of these jobs is unknown
                log.error("storage_settle_failed", error=repr(exc), jobs=len(jobs))
                for job in jobs:
                    job.error = job.error or exc
            wake(jobs)
        ran = trio.current_time() - ended.started if ended is not None else 0.0
        if ran >= RESTART_AFTER and self._turns is not None and not self._closed:
            log.warning("storage_commit_process_restarting", ran_seconds=round(ran))
            self._start_process()

    def _wake_finished(self) -> None:
        """Resume the writers of every finished batch."""
        done = self._done
        while done:
            wake(done.popleft())

    def _before_io_wait(self, timeout: float) -> None:
        self._hand_over()
        self._loop_may_sleep = timeout > 0
        if timeout > 0 and self._done:  # finished before the flag was up: make sure the wait ends
            self._token.run_sync_soon(self._wake_finished)

    def _after_io_wait(self) -> None:
        self._loop_may_sleep = False
        self._wake_finished()  # they run in the batch of tasks that starts now

    # -- the worker thread -------------------------------------------------------

    def _flush_batches(self) -> None:
        """Stage 1: write and flush each batch's data, then hand it to the indexer."""
        while (batch := self._inbox.take()) is not None:
            try:
                self._write_and_flush(batch)
            except BaseException as exc:  # a bug: the outcome of these jobs is unknown
                fail_all(batch, exc)
            self._flushed.put(batch)
        self._flushed.close()

    def _index_batches(self) -> None:
        """Stage 2: commit every flushed batch waiting in one transaction; a batch with
        appends to flush after the commit goes on to a syncer, any other is done."""
        while (batch := self._flushed.take()) is not None:
            try:
                self.batches += 1
                self.jobs += len(batch)
                write_unflushed(batch)
                ready = [job for job in batch if job.error is None]
                with self._conn_lock:
                    if self._flush_after_commit is None or all(job.unflushed for job in ready):
                        committed = commit_batch(self._conn, ready)
                    else:  # flushed before: such a commit must be durable itself, as without flush_after_commit
                        self._conn.execute("PRAGMA synchronous = FULL")
                        try:
                            committed = commit_batch(self._conn, ready)
                        finally:
                            self._conn.execute("PRAGMA synchronous = NORMAL")
                if self._syncers and any(job.unflushed for job in committed):
                    self._syncing.put((batch, committed))
                    continue
                run_after(committed)
            except BaseException as exc:  # a bug: the outcome of these jobs is unknown
                fail_all(batch, exc)
            self._finished(batch)
        for _ in range(self._syncers):
            self._syncing.put(None)

    def _sync_batches(self) -> None:
        """Stage 3: the flush after a batch's commit, then resume its writers.  Several
        syncers: the next batch commits and starts its flush while this one's runs (with
        one flush at a time, a slow flush gathered every connection into the next batch,
        and the event loop waited for it with nothing to do)."""
        while (item := self._syncing.get()) is not None:
            batch, committed = item
            try:
                run_after(self._flush_committed(committed))
            except BaseException as exc:  # a bug: the outcome of these jobs is unknown
                fail_all(batch, exc)
            self._finished(batch)

    def _flush_committed(self, committed: list[CommitJob]) -> list[CommitJob]:
        """The one flush after a commit, for its unflushed appends; the jobs that stand.
        If it fails, those appends are put back (row and data file) and refused."""
        unflushed = [job for job in committed if job.unflushed]
        if not unflushed:
            return committed
        try:
            self._flush_after_commit([job.pending for job in unflushed])  # type: ignore[misc]
        except Exception as exc:
            log.error("storage_flush_failed", error=repr(exc), jobs=len(unflushed))
            with self._conn_lock:
                self.flush_failures += 1
                try:
                    index.roll_back_appends(self._conn, [job.appended[6:9] for job in unflushed])  # type: ignore[index]
                except sqlite3.Error as rollback_exc:  # recovery puts them back at the next start
                    log.error("storage_rollback_failed", error=repr(rollback_exc))
            refuse(unflushed, exc)
            return [job for job in committed if not job.unflushed]
        return committed

    def _finished(self, batch: list[CommitJob]) -> None:
        """Queue the batch's writers for waking.  A busy event loop wakes them after its
        next I/O check (no trip through its wake-up socket); one that may be asleep, or
        a detached committer, is woken now.  (Both sides set their flag, then read the
        other's: under the GIL one of them sees the other.)"""
        self._done.append(batch)
        if self._loop_may_sleep or self._turns is None:
            try:
                self._token.run_sync_soon(self._wake_finished)
            except trio.RunFinishedError:
                log.error("storage_commit_after_shutdown", jobs=len(batch))

    def _write_and_flush(self, batch: list[CommitJob]) -> None:
        written: list[PendingWrite] = []
        for job in batch:
            pending = job.pending
            if pending is None:
                continue
            try:
                pending.finish_writing(job.tail)
            except Exception as exc:
                job.error = exc
                discard(job)
            else:
                written.append(pending)
        if not written:
            return
        try:
            self._files.sync_writes(written)
        except Exception as exc:
            log.error("storage_flush_failed", error=repr(exc), jobs=len(written))
            for job in batch:
                if job.pending is not None and job.error is None:
                    job.error = exc
                    discard(job)


class _TurnHandOver(trio.abc.Instrument):
    """Hooks a GroupCommitter into the turns of the event loop: the jobs submitted
    during a turn are handed to the worker just before the loop checks for I/O,
    and finished writers are rescheduled just after it, to run in the very next
    batch of tasks.

    Why: a job handed over at once wakes the worker in the middle of a turn, and
    its batch then starts with a job or two while the rest of the turn's wait for
    the next one; and a wake-up through ``run_sync_soon`` costs the worker a write
    to trio's wake-up socket (and its GIL hand-back) and the writers one more turn
    (the loop's I/O check, its entry-queue task, then their own turn).  Measured
    with 16 connections of 1 KiB appends: handing a turn's jobs over as soon as
    two (or four) were queued and the worker was idle cost the event loop ~50 µs
    more CPU per append and a fifth of the rate -- the worker then takes the GIL
    back and forth while the loop runs Python.  (The commit process takes no GIL:
    its batches go mid-turn, see ``GroupCommitter.run``.)"""

    def __init__(self, committer: GroupCommitter) -> None:
        self._committer = committer

    def before_io_wait(self, timeout: float) -> None:
        self._committer._before_io_wait(timeout)

    def after_io_wait(self, timeout: float) -> None:
        self._committer._after_io_wait()


