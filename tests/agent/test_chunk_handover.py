"""ChunkHandover: chunks reach the consumer inline as one-chunk batches; the last close ends its input."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agent.batcher import Batch, Chunk, ChunkHandover
from agent.fingerprint import identity_of

FILE = identity_of(1, 2, b"first line\n")


def _handover() -> tuple[ChunkHandover, list[Batch], list[str]]:
    got: list[Batch] = []
    ended: list[str] = []
    return ChunkHandover(got.append, lambda: ended.append("ended")), got, ended


async def test_a_chunk_is_delivered_at_once_as_a_batch_stamped_with_its_arrival(autojump_clock: trio.testing.MockClock) -> None:
    handover, got, _ = _handover()
    await trio.sleep(1.5)
    await handover.send(Chunk("a", 7, FILE, 40, b"x\ny\n"))
    assert got == [Batch("a", 7, FILE, 40, (b"x\ny\n",), 4, 1.5)]
    assert got[0].end == 44 and got[0].body() == b"x\ny\n"
    await handover.send(Chunk("a", 7, FILE, 44, b""))  # nothing read: nothing to ship
    assert len(got) == 1


async def test_the_input_ends_when_the_last_clone_closes() -> None:
    handover, got, ended = _handover()
    first, second = handover.clone(), handover.clone()
    async with handover:
        pass
    await first.aclose()
    first.close()  # closing twice counts once
    assert ended == []
    await second.send(Chunk("b", 1, FILE, 0, b"z\n"))
    async with second:
        pass
    assert ended == ["ended"] and [b.stream for b in got] == ["b"]
    with pytest.raises(trio.ClosedResourceError):
        await second.send(Chunk("b", 1, FILE, 2, b"w\n"))
    with pytest.raises(trio.ClosedResourceError):
        second.clone()
