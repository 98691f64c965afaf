"""Per-object writer state: the lock that makes "check the offset, write,
commit" one atomic step per object, plus a cache of what is committed.

Storage is the index's only writer and every write to an object happens under
its slot's lock, so a loaded slot knows the object's committed row exactly: an
append checks its offset without asking SQLite, and keeps the data file open
between appends.  Slots are created on demand; at most ``capacity`` idle ones
are kept (least recently used go first, closing their fd); a slot with holders
or waiters is never dropped.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from server.errors import S3Error
from server.index import IndexedObject

Loader = Callable[[str, str], "tuple[IndexedObject | None, int | None]"]  # blocking: row and open write fd


@dataclass(eq=False)
class ObjectSlot:
    """One object's lock and, once loaded, its committed row and write fd (valid under the lock)."""

    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0  # holders and waiters
    loaded: bool = False
    row: IndexedObject | None = None
    fd: int | None = None

    def forget(self) -> None:
        """Drop the cached state (and close the fd); the next holder reloads it."""
        self.loaded, self.row = False, None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def known_missing(self) -> None:
        self.forget()
        self.loaded = True


class ObjectSlots:
    """The slots of all objects being (or recently) written."""

    def __init__(self, load: Loader, *, capacity: int) -> None:
        self._load = load
        self._capacity = capacity
        self._slots: OrderedDict[tuple[str, str], ObjectSlot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._slots)

    def __repr__(self) -> str:
        busy = sum(1 for slot in self._slots.values() if slot.users)
        return f"ObjectSlots(slots={len(self._slots)}, busy={busy}, capacity={self._capacity})"

    def hold(self, bucket: str, key: str, *, load: bool = True) -> HeldSlot:
        """``async with slots.hold(b, k) as slot:`` -- the object's lock, its committed state loaded."""
        return HeldSlot(self, (bucket, key), load)

    def close(self) -> None:
        for slot in self._slots.values():
            slot.forget()
        self._slots.clear()

    def _enter(self, name: tuple[str, str]) -> ObjectSlot:
        slot = self._slots.get(name)
        if slot is None:
            slot = self._slots[name] = ObjectSlot()
        else:
            self._slots.move_to_end(name)
        slot.users += 1
        return slot

    def _leave(self, slot: ObjectSlot) -> None:
        slot.users -= 1
        if len(self._slots) > self._capacity:
            for name, candidate in list(self._slots.items()):  # least recently used first
                if len(self._slots) <= self._capacity:
                    break
                if candidate.users == 0:
                    del self._slots[name]
                    candidate.forget()


class HeldSlot:
    """The async context manager of ``ObjectSlots.hold`` (a class, not a generator:
    it is on every write's path)."""

    __slots__ = ("_slots", "_name", "_load", "_slot")

    def __init__(self, slots: ObjectSlots, name: tuple[str, str], load: bool) -> None:
        self._slots, self._name, self._load = slots, name, load

    async def __aenter__(self) -> ObjectSlot:
        slot = self._slot = self._slots._enter(self._name)
        try:
            try:
                slot.lock.acquire_nowait()  # the common case costs no trip through the scheduler
            except trio.WouldBlock:
                await slot.lock.acquire()
            try:
                if self._load and not slot.loaded:
                    slot.row, slot.fd = await trio.to_thread.run_sync(self._slots._load, *self._name)
                    slot.loaded = True
            except BaseException:
                slot.forget()
                slot.lock.release()
                raise
        except BaseException:
            self._slots._leave(slot)
            raise
        return slot

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and not isinstance(exc, S3Error):
            self._slot.forget()  # unknown outcome: reload from the index next time
        # (an S3Error is a refusal: the committed state is unchanged and still known)
        self._slot.lock.release()
        self._slots._leave(self._slot)
