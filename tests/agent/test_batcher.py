"""Flush rules (pure, time passed in) and the trio shell (MockClock, exact virtual times)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from agent.batcher import Batch, BatchRules, Chunk, run_batcher
from agent.fingerprint import identity_of

FILE = identity_of(1, 2, b"first line\n")


def chunk(data: bytes, offset: int, stream: str = "a", generation: int = 1) -> Chunk:
    return Chunk(stream, generation, FILE, offset, data)


def test_small_chunks_join_until_max_bytes() -> None:
    rules = BatchRules(max_bytes=10, max_wait=1.0)
    assert rules.add(chunk(b"abc\n", 0), now=0.0) == []
    assert rules.add(chunk(b"def\n", 4), now=0.1) == []
    [batch] = rules.add(chunk(b"gh\n", 8), now=0.2)  # 11 bytes would not fit: flush the 8 first
    assert (batch.offset, batch.end, batch.body(), batch.started) == (0, 8, b"abc\ndef\n", 0.0)
    assert rules.pending_bytes == 3


def test_reaching_max_bytes_flushes_at_once() -> None:
    rules = BatchRules(max_bytes=8, max_wait=1.0)
    [batch] = rules.add(chunk(b"12345678", 0), now=0.0)
    assert batch.size == 8 and batch.parts == (b"12345678",)
    assert batch.body() is batch.parts[0]  # a single chunk is sent without a copy
    assert rules.next_deadline() == float("inf")


def test_age_flushes_oldest_first() -> None:
    rules = BatchRules(max_bytes=100, max_wait=0.2)
    rules.add(chunk(b"a\n", 0, stream="a"), now=1.0)
    rules.add(chunk(b"b\n", 0, stream="b"), now=1.1)
    assert rules.next_deadline() == pytest.approx(1.2)
    assert rules.due(1.19) == []
    [first] = rules.due(1.2)
    assert first.stream == "a"
    assert rules.next_deadline() == pytest.approx(1.3)
    [second] = rules.due(5.0)
    assert second.stream == "b"


def test_a_batch_never_spans_two_files_or_a_gap() -> None:
    rules = BatchRules(max_bytes=100, max_wait=1.0)
    rules.add(chunk(b"old\n", 10, generation=1), now=0)
    [old] = rules.add(chunk(b"new\n", 0, generation=2), now=0)
    assert (old.generation, old.offset, old.end) == (1, 10, 14)
    [before_gap] = rules.add(chunk(b"skip\n", 50, generation=2), now=0)
    assert (before_gap.offset, before_gap.end) == (0, 4)


def test_streams_are_independent_and_flush_all_keeps_order() -> None:
    rules = BatchRules(max_bytes=100, max_wait=1.0)
    rules.add(chunk(b"a1\n", 0, stream="a"), now=0)
    rules.add(chunk(b"b1\n", 0, stream="b"), now=0)
    rules.add(chunk(b"a2\n", 3, stream="a"), now=0)
    batches = rules.flush_all()
    assert [(b.stream, b.body()) for b in batches] == [("a", b"a1\na2\n"), ("b", b"b1\n")]
    assert rules.flush_all() == []


def test_batch_carries_the_newest_identity() -> None:
    rules = BatchRules(max_bytes=100, max_wait=1.0)
    short = identity_of(1, 2, b"ab")
    longer = identity_of(1, 2, b"ab\ncd\n")
    rules.add(Chunk("a", 1, short, 0, b"ab"), now=0)
    rules.add(Chunk("a", 1, longer, 2, b"\ncd\n"), now=0)
    [batch] = rules.flush("a")
    assert batch.identity == longer


async def test_shell_flushes_by_age_at_exact_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    chunks_send, chunks_receive = trio.open_memory_channel[Chunk](10)
    batches_send, batches_receive = trio.open_memory_channel[Batch](10)
    arrivals: list[tuple[float, bytes]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(run_batcher, chunks_receive, batches_send, BatchRules(max_bytes=10, max_wait=0.2))
        await chunks_send.send(chunk(b"ab\n", 0))  # t=0: waits for max_wait
        await trio.sleep(0.1)
        await chunks_send.send(chunk(b"cd\n", 3))  # t=0.1: joins the same batch
        batch = await batches_receive.receive()
        arrivals.append((trio.current_time(), batch.body()))
        await chunks_send.send(chunk(b"0123456789", 6))  # t=0.2: full, goes at once
        batch = await batches_receive.receive()
        arrivals.append((trio.current_time(), batch.body()))
        await trio.sleep(1)
        await chunks_send.send(chunk(b"tail\n", 16))  # t=1.2: the input ends before max_wait
        await chunks_send.aclose()
        batch = await batches_receive.receive()
        arrivals.append((trio.current_time(), batch.body()))
        with pytest.raises(trio.EndOfChannel):
            await batches_receive.receive()
    assert arrivals == [(0.2, b"ab\ncd\n"), (0.2, b"0123456789"), (1.2, b"tail\n")]
