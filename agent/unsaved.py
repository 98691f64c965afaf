"""The streams whose state is newer than the checkpoint file, and the writes that share them.

Every checkpoint write carries every state not on disk yet: an intent that
must reach the disk before its append goes out takes along the acknowledged
progress of every other stream (group commit, DESIGN.md "Exactly once, end
to end").  The shipper marks a lane here whenever its state changes and saves
through ``save_with`` when a write must happen now.
"""

from __future__ import annotations

from agent.checkpoint import Checkpoint
from agent.lanes import Lane


class UnsavedStates:
    """Lanes whose state the checkpoint file does not have yet."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._lanes: set[Lane] = set()

    def __len__(self) -> int:
        return len(self._lanes)

    def mark(self, *lanes: Lane) -> None:
        """These lanes' states changed in memory."""
        self._lanes.update(lanes)

    async def save_with(self, *lanes: Lane) -> None:
        """Write these lanes' states now, with every other unsaved one (one write for all)."""
        self._lanes.difference_update(lanes)
        others = [lane.state for lane in self._lanes]
        self._lanes.clear()
        await self.checkpoint.save(*(lane.state for lane in lanes), *others)

    async def save(self, *, durable: bool = False) -> None:
        """Write every unsaved state.  With none this returns at once, unless ``durable``:
        then it also waits for a write that another task started with these states in it."""
        if self._lanes or durable:
            await self.save_with()

    def __repr__(self) -> str:
        return f"UnsavedStates({len(self._lanes)})"
