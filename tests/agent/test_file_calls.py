"""FileCalls: many tasks' blocking calls share worker-thread hops, with to_thread's results and cancellation."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from agent.file_calls import FileCalls


async def test_each_caller_gets_its_own_result_or_exception(nursery: trio.Nursery) -> None:
    calls = FileCalls(runners=2)
    await nursery.start(calls.run)

    def boom() -> None:
        raise OSError("no such file")

    assert await calls(divmod, 7, 2) == (3, 1)
    with pytest.raises(OSError, match="no such file"):
        await calls(boom)
    assert await calls(threading.get_ident) != threading.get_ident()  # in a worker thread, not trio's


async def test_calls_waiting_together_share_a_hop(nursery: trio.Nursery) -> None:
    calls = FileCalls(runners=2)
    await nursery.start(calls.run)
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await calls(pow, i, 2)

    async with trio.open_nursery() as callers:
        for i in range(200):
            callers.start_soon(one, i)
    assert results == {i: i * i for i in range(200)}
    assert calls.calls == 200
    assert calls.hops <= 4  # not one hop per call


async def test_a_call_cancelled_before_it_started_never_runs(nursery: trio.Nursery) -> None:
    calls = FileCalls(runners=1)
    await nursery.start(calls.run)
    release, ran = threading.Event(), []
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def blocker() -> str:
        token.run_sync_soon(started.set)
        release.wait(10)
        return "blocker done"

    async def first() -> None:
        assert await calls(blocker) == "blocker done"

    async with trio.open_nursery() as callers:
        callers.start_soon(first)
        await started.wait()  # the only runner is busy with ``blocker``
        second = trio.CancelScope()

        async def queued_then_cancelled() -> None:
            with second:
                await calls(ran.append, "second")  # queued behind ``blocker``

        callers.start_soon(queued_then_cancelled)
        await trio.testing.wait_all_tasks_blocked()
        second.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert second.cancelled_caught
    assert ran == []
    assert await calls(len, "after") == 5  # the runner goes on


async def test_a_started_call_runs_to_its_end_and_returns_its_result(nursery: trio.Nursery) -> None:
    calls = FileCalls(runners=1)
    await nursery.start(calls.run)
    release = threading.Event()
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()
    got: list[str] = []

    def slow() -> str:
        token.run_sync_soon(started.set)
        release.wait(10)
        return "finished"

    async def caller(scope: trio.CancelScope) -> None:
        with scope:
            got.append(await calls(slow))
            await trio.lowlevel.checkpoint()  # the cancellation arrives here
            got.append("not reached")

    scope = trio.CancelScope()
    async with trio.open_nursery() as callers:
        callers.start_soon(caller, scope)
        await started.wait()
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # still waiting for the call, which is not abandoned
        release.set()
    assert got == ["finished"]
