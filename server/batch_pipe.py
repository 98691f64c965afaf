"""A hand-off between threads that gives the taker everything queued at once (group commit's batches)."""

from __future__ import annotations

import queue
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchPipe(Generic[T]):
    """Hands lists of items to a worker thread, which takes all that are queued at once.

    A ``queue.SimpleQueue`` of lists: putting is one C call, and it wakes the
    worker only when the worker waits.  ``None`` is the end."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[list[T] | None] = queue.SimpleQueue()
        self._closed = False

    def put(self, items: list[T]) -> None:
        self._queue.put(items)

    def take(self) -> list[T] | None:
        """Every queued item (blocking until there is one); None once closed and drained."""
        if self._closed:
            return None
        batch: list[T] = []
        items = self._queue.get()
        while items is not None:
            batch += items
            try:
                items = self._queue.get_nowait()
            except queue.Empty:
                return batch
        self._closed = True  # the end: what came before it is the last batch
        return batch or None

    def close(self) -> None:
        self._queue.put(None)
