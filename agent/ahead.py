"""Appends recorded ahead: whole appends already queued behind the next one, one checkpoint write for several.

A stream that is behind has more than its next append read and queued.  Its
next append's intent is written while the current PUT is on the wire; the
appends queued after it can go into the same write (``StreamState``'s
``later_intents``), so the stream flushes the journal once per few appends
instead of once per append (its flush queued with the server's data and index
flushes at the disk, every append).

Only *whole* appends are recorded: a group of batches that ``Lane.take``
will return as it is, because a batch that does not join it already waits
behind it (more bytes arriving later cannot change it).  This mirrors
``Lane.take``'s rule; if the two ever differ, nothing is lost or repeated:
``StreamObjects.on_intent`` sees that the append about to go is not the one
recorded, and records it again, alone, before it goes.  Pure: no trio.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from agent.batcher import Batch
from agent.checkpoint import Intent

MAX_PENDING = 8  # recorded appends per stream, the one on the wire included: one journal flush per 7 appends


def whole_appends(queue: Iterable[Batch], max_bytes: int, after: Intent) -> Iterator[Intent]:
    """The intents of the whole appends in ``queue`` (taken as ``Lane.take`` would), each placed after the one
    before it, the first after ``after``.  For bodies that are the file bytes themselves (no compression)."""
    r0 = after.r1
    group: list[Batch] = []
    size = 0
    for batch in queue:
        if group and (batch.generation == group[0].generation and batch.offset == group[-1].end
                      and size + batch.size <= max_bytes):
            group.append(batch)
            size += batch.size
            continue
        if group:  # ``batch`` does not join it: the group is whole
            yield Intent(group[-1].identity, group[0].offset, group[-1].end, r0, r0 + size)
            r0 += size
        group, size = [batch], batch.size
    # The last group may still grow with batches not read yet: it is not whole.
