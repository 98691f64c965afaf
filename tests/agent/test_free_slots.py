"""Taking a free request slot or free read-ahead budget does not yield; waiting ones are served in turn."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import trio
import trio.testing

from agent.request_slots import RequestSlots
from agent.tailer import ReadAheadBudget


class _Steps(trio.abc.Instrument):
    """Counts the steps of one task: a yield to the scheduler ends one."""

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.steps = 0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


@contextmanager
def _no_yield() -> Iterator[None]:
    steps = _Steps()
    trio.lowlevel.add_instrument(steps)
    try:
        yield
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert steps.steps == 0, "yielded to the scheduler"


async def test_a_free_slot_is_taken_without_yielding() -> None:
    slots = RequestSlots(1)
    with _no_yield():
        async with slots:
            assert slots.free == 0
    assert slots.free == 1


class _Users:
    """Tasks taking turns at one request slot; ``order`` is who got it."""

    def __init__(self) -> None:
        self.slots = RequestSlots(1)
        self.order: list[str] = []

    async def use(self, name: str, hold: float) -> None:
        async with self.slots:
            self.order.append(name)
            await trio.sleep(hold)


async def test_a_task_waiting_for_a_slot_is_not_overtaken(autojump_clock: trio.testing.MockClock) -> None:
    users = _Users()
    use = users.use
    async with trio.open_nursery() as nursery:
        nursery.start_soon(use, "first", 1.0)
        await trio.sleep(0.1)
        nursery.start_soon(use, "waiting", 0.0)
        await trio.sleep(0.1)  # "waiting" is parked now
        await trio.sleep(0.7)  # "first" still holds it
        with trio.move_on_after(0):  # a newcomer finds the slot owed to "waiting"
            await use("newcomer", 0.0)
    assert users.order == ["first", "waiting"]


async def test_a_cancelled_waiter_gives_up_its_place_and_takes_no_slot(autojump_clock: trio.testing.MockClock) -> None:
    users = _Users()
    use = users.use

    async def give_up_later(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await use("gave up", 0.0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(use, "first", 1.0)
        await trio.sleep(0.1)
        gave_up = await nursery.start(give_up_later)
        await trio.sleep(0.1)  # parked behind "first" now
        gave_up.cancel()
        nursery.start_soon(use, "last", 0.0)
    assert users.order == ["first", "last"]
    assert users.slots.free == 1


async def test_free_budget_is_taken_without_yielding() -> None:
    budget = ReadAheadBudget(10)
    with _no_yield():
        assert await budget.acquire(4) == 4
    assert budget.in_use == 4
