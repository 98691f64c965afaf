"""The tailers' blocking file calls, many per worker-thread hop.

A tailer's step is a ``pread`` and an ``fstat``, each a few microseconds, but
each handed to a worker thread costs tens of microseconds of trio and thread
hand-over: with a thousand tailers poked in the same round that was the
largest part of reading.  ``FileCalls`` queues the calls of every task that is
waiting and runs them together, in order, in one hop; ``runners`` hops may be
under way at once, so one slow file (a hung network mount) does not stop the
others for longer than its own batch.

A call behaves as ``trio.to_thread.run_sync`` does: cancelling its caller
before the call has started takes it off the queue; once it has started it
runs to the end and its result is returned (the cancellation comes at the
caller's next checkpoint).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import outcome
import trio

T = TypeVar("T")


class _Call:
    __slots__ = ("fn", "args", "task", "result", "started")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], task: trio.lowlevel.Task) -> None:
        self.fn = fn
        self.args = args
        self.task = task  # rescheduled with the result: no Event per call
        self.result: outcome.Outcome | None = None
        self.started = False


def _run_all(calls: list[_Call]) -> None:
    for call in calls:
        call.result = outcome.capture(call.fn, *call.args)


class FileCalls:
    """``await calls(fn, *args)`` from any task; ``run`` (the component) does the work."""

    def __init__(self, runners: int) -> None:
        self.runners = runners
        self.hops = 0  # worker-thread hops so far
        self.calls = 0  # calls run so far
        self._queue: list[_Call] = []
        self._wake = trio.Event()

    async def __call__(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        call = _Call(fn, args, trio.lowlevel.current_task())
        self._queue.append(call)
        self._wake.set()

        def abort(_: object) -> trio.lowlevel.Abort:
            if call.started:
                return trio.lowlevel.Abort.FAILED  # it runs to the end, as a worker thread's call would
            self._queue.remove(call)  # not started: it never runs
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)  # type: ignore[no-any-return]

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.runners):
                nursery.start_soon(self._runner)
            task_status.started()

    async def _runner(self) -> None:
        while True:
            while not self._queue:
                self._wake = trio.Event()
                await self._wake.wait()
            # Let every task that is runnable now queue its call first: one hop carries them all.
            await trio.lowlevel.cancel_shielded_checkpoint()
            calls, self._queue = self._queue, []
            if not calls:
                continue  # another runner took them
            for call in calls:
                call.started = True
            self.hops += 1
            self.calls += len(calls)
            with trio.CancelScope(shield=True):  # taken calls always finish (their callers wait for them)
                await trio.to_thread.run_sync(_run_all, calls)
            for call in calls:
                trio.lowlevel.reschedule(call.task, call.result)

    def __repr__(self) -> str:
        return f"<FileCalls queued={len(self._queue)} hops={self.hops} calls={self.calls}>"
