"""A stream takes its place in line before its bytes are read (Shipper.expect), and again as each turn ends."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.agent.test_shipper import IDLE, shipping
from tests.agent.test_shipper_turns import _recording


async def test_an_expected_place_ships_what_was_read_by_its_turn_and_passes_when_nothing_was(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = IDLE  # checkpoint writes run in threads: jump only when truly idle
    fake, appends = _recording()
    async with shipping(tmp_path, fake, rate=10.0, burst=1.0) as h:
        told: list[tuple[str, int]] = []
        h.shipper.on_expected = lambda stream, place: told.append((stream, place))
        for name in "abc":
            h.add(f"/logs/{name}.log")
        assert h.shipper.expect("/logs/a.log") == 0
        assert h.shipper.expect("/logs/b.log") == 1
        assert h.shipper.expect("/logs/a.log") is None  # waiting already
        assert h.shipper.order.within(5) == ["/logs/a.log", "/logs/b.log"]
        await h.send("/logs/b.log", b"read as its turn came near\n")  # b's bytes join its place; a's read found none
        await h.shipped("/logs/b.log", 27)
        # a's place passed (a token spent, no append), b appended in its place, and is in line again, expected
        assert [key for key, _ in appends] == ["h/logs/b.log"]
        with trio.fail_after(5):
            await h.shipper.wait_for(lambda: ("/logs/b.log", 0) in told)
        assert h.shipper.order.within(5) == ["/logs/b.log"]
        await h.send("/logs/b.log", b"more\n")  # its next read: the append follows the token
        await h.shipped("/logs/b.log", 32)
    assert [key for key, _ in appends] == ["h/logs/b.log", "h/logs/b.log"]
    assert h.stored("h/logs/b.log") == b"read as its turn came near\nmore\n"
    assert h.stored("h/logs/a.log") is None
