"""At most ``total`` requests on the wire: a counting lock that costs one park and one wake-up per wait.

``trio.CapacityLimiter`` does the same with borrower bookkeeping and a
``ParkingLot``; with a thousand streams' turns queuing for a few request
slots, its acquire and release were ~8% of the agent's CPU (py-spy, 1,000
files).  Waiters are served in arrival order, a released slot passes straight
to the first of them, and a free slot is taken without yielding (the request
that follows yields soon anyway).
"""

from __future__ import annotations

from collections import deque

import trio


class RequestSlots:
    """``async with slots:`` holds one of ``total`` slots for the block."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"need at least one request slot, got {total}")
        self._free = total
        self._waiters: deque[trio.lowlevel.Task] = deque()

    @property
    def free(self) -> int:
        return self._free

    def __repr__(self) -> str:
        return f"<RequestSlots free={self._free} waiting={len(self._waiters)}>"

    async def __aenter__(self) -> None:
        if self._free:  # never while others wait: a released slot goes to a waiter, not back here
            self._free -= 1
            return
        task = trio.lowlevel.current_task()
        self._waiters.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiters.remove(task)  # still waiting: no slot was passed to it
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def __aexit__(self, *exc: object) -> None:
        if self._waiters:
            trio.lowlevel.reschedule(self._waiters.popleft())  # the slot passes to it
        else:
            self._free += 1
