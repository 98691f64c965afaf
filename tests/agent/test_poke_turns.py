"""A waiting stream is read once, as its turn comes near; one put in line near its turn is read at once
(exact virtual time)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import trio
import trio.testing

from agent.discovery import LEAD, Streams
from agent.metrics import AgentMetrics
from agent.tailer import ReadAheadBudget
from tests.agent.agent_support import agent_config


class _Order:
    """What the pokes ask of the turn order: who comes within the next turns, and the rate."""

    rate = 2 / LEAD  # LEAD * rate = 2 turns are "near"

    def __init__(self, ready: list[str]) -> None:
        self.ready = ready

    def within(self, turns: int) -> list[str]:
        return self.ready[:turns]

    def beyond(self, turns: int) -> set[str]:
        return set(self.ready[turns:])

    def interval(self) -> float:
        return 1.0


class _Shipper:
    """The shipper as the pokes see it: its turn order."""

    on_expected = None  # Streams sets it

    def __init__(self, ready: list[str]) -> None:
        self.order = _Order(ready)

    @property
    def ready(self) -> list[str]:
        return self.order.ready

    @ready.setter
    def ready(self, ready: list[str]) -> None:
        self.order.ready = ready


class _Tailer:
    def __init__(self, name: str, pokes: Counter[str]) -> None:
        self.name, self.pokes = name, pokes

    def poke(self) -> None:
        self.pokes[self.name] += 1


def _streams(tmp_path: Path, shipper: _Shipper, pokes: Counter[str]) -> Streams:
    chunks, _ = trio.open_memory_channel(0)
    streams = Streams(agent_config(tmp_path, "http://127.0.0.1:1", "logs"), shipper, None, ReadAheadBudget(1), chunks,  # type: ignore[arg-type]
                      host="h", metrics=AgentMetrics())
    streams._tailers = {name: _Tailer(name, pokes) for name in "abcde"}  # type: ignore[misc]
    return streams


async def test_each_waiting_stream_is_poked_once_as_it_comes_near(tmp_path: Path, mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    shipper = _Shipper(["a", "b", "c", "d"])
    pokes: Counter[str] = Counter()
    streams = _streams(tmp_path, shipper, pokes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(streams._poke_before_turns)
        # Looks at 0, LEAD/4, LEAD/2...; the test acts between two of them (a tie's order is trio's to choose).
        await trio.sleep(LEAD + LEAD / 8)  # five looks: the first two turns are near, poked once however long they stay
        assert pokes == Counter(a=1, b=1)
        shipper.ready.remove("a")  # a's turn begins: c comes near; a is not read again (its turn has its bytes)
        await trio.sleep(LEAD / 4)
        assert pokes == Counter(a=1, b=1, c=1)
        nursery.cancel_scope.cancel()


async def test_a_stream_back_in_line_is_read_at_once_only_if_its_turn_is_near(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    shipper = _Shipper(["a", "b", "c"])
    pokes: Counter[str] = Counter()
    streams = _streams(tmp_path, shipper, pokes)
    assert shipper.on_expected == streams._read_if_near  # type: ignore[comparison-overlap]
    streams._read_if_near("d", 1)  # within LEAD * rate = 2 turns: read now
    streams._read_if_near("e", 2)  # further: read as it comes near
    assert pokes == Counter(d=1)
    shipper.ready = ["d", "e"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(streams._poke_before_turns)
        await trio.sleep(LEAD / 8)  # one look: d was read already, e comes near now
        assert pokes == Counter(d=1, e=1)
        nursery.cancel_scope.cancel()


def test_lead_is_a_small_part_of_a_second() -> None:
    assert 0 < LEAD <= 0.25  # what an append carries is at most this old (plus the turn's own time)


class _RoundShipper(_Shipper):
    """What a round asks of the shipper, and the places it hands out."""

    def __init__(self, ready: list[str]) -> None:
        super().__init__(ready)
        self.expected: list[str] = []

    def lane(self, stream: str) -> None:
        return None

    def expect(self, stream: str) -> int:
        self.expected.append(stream)
        self.ready.append(stream)
        return len(self.ready) - 1


async def test_a_round_reads_new_paths_at_once_and_puts_a_grown_file_in_line(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    shipper = _RoundShipper(["x", "y", "z"])  # three turns ahead: beyond LEAD * rate = 2
    pokes: Counter[str] = Counter()
    streams = _streams(tmp_path, shipper, pokes)
    streams._tailers = {name: _Tailer(name, pokes) for name in "ab"}  # type: ignore[misc]
    looks = {"a": (1, 1, 0, 0), "b": (1, 2, 0, 0)}

    async def look(fn: object, paths: list[str]) -> list[tuple[int, int, int, int]]:
        return [looks[path] for path in paths]

    streams._file_calls = look  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(streams._poke_paced)
        await trio.sleep(0.001)  # the first round: both seen for the first time, read at once
        assert pokes == Counter(a=1, b=1) and shipper.expected == []
        looks["a"] = (1, 1, 10, 1)  # a grew
        await trio.sleep(1.0)  # the next round: a takes its place in line (the fourth turn), read later
        assert shipper.expected == ["a"] and pokes == Counter(a=1, b=1)
        nursery.cancel_scope.cancel()
