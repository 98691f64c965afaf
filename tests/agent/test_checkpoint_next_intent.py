"""The next intent: recorded while the first append is on the wire, settled by the object's length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.checkpoint import STATE_FILE, Intent, StreamState, load_states, write_states
from agent.errors import CheckpointConflict, CheckpointError
from agent.fingerprint import identity_of

OLD = identity_of(1, 10, b"old file\n")
NEW = identity_of(1, 11, b"new file\n")
FIRST = Intent(OLD, 100, 150, 1000, 1050)
SECOND = Intent(NEW, 0, 30, 1050, 1080)  # the next append may start the next file


def pending_two() -> StreamState:
    state = StreamState("/var/log/app.log", "host/app.log", OLD, offset=100, object_length=1000)
    return state.with_intent(FIRST).with_intent(SECOND)


def test_the_first_landing_makes_the_next_intent_the_pending_one() -> None:
    state = pending_two().landed()
    assert (state.identity, state.offset, state.object_length) == (OLD, 150, 1050)
    assert (state.intent, state.next_intent) == (SECOND, None)
    state = state.landed()
    assert (state.identity, state.offset, state.object_length, state.intent) == (NEW, 30, 1080, None)


def test_the_first_not_landing_drops_both() -> None:
    """The second is only ever sent after the first landed: neither is in the object."""
    state = pending_two().not_landed()
    assert (state.offset, state.object_length, state.intent, state.next_intent) == (100, 1000, None, None)


@pytest.mark.parametrize(
    ("length", "expected"),
    [(1000, (OLD, 100, 1000)), (1050, (OLD, 150, 1050)), (1080, (NEW, 30, 1080))],
)
def test_the_object_length_says_which_appends_landed(length: int, expected: tuple[object, int, int]) -> None:
    state = pending_two().settled_at(length)
    assert state is not None and (state.identity, state.offset, state.object_length) == expected
    assert (state.intent, state.next_intent) == (None, None)


@pytest.mark.parametrize("length", [0, 999, 1020, 1051, 1079, 1081])
def test_any_other_length_is_not_ours(length: int) -> None:
    assert pending_two().settled_at(length) is None


def test_a_settled_state_without_intents_only_accepts_its_own_length() -> None:
    state = StreamState("s", "k", OLD, offset=100, object_length=1000)
    assert state.settled_at(1000) == state and state.settled_at(1001) is None


def test_rolling_or_moving_with_two_pending_is_refused() -> None:
    with pytest.raises(CheckpointConflict, match="cannot roll"):
        pending_two().rolled("k2")
    with pytest.raises(CheckpointConflict, match="cannot move"):
        pending_two().moved(NEW, 0)


def test_both_intents_survive_the_file_and_older_files_still_load(tmp_path: Path) -> None:
    states = {"/var/log/app.log": pending_two()}
    write_states(tmp_path, states)
    assert load_states(tmp_path) == states
    document = json.loads((tmp_path / STATE_FILE).read_text())
    del document["streams"]["/var/log/app.log"]["next_intent"]  # as an agent before this change wrote it
    (tmp_path / STATE_FILE).write_text(json.dumps(document))
    assert load_states(tmp_path)["/var/log/app.log"] == StreamState("/var/log/app.log", "host/app.log", OLD, 100, 1000, FIRST)


def test_a_next_intent_that_does_not_follow_is_corrupt(tmp_path: Path) -> None:
    write_states(tmp_path, {"s": pending_two()})
    document = json.loads((tmp_path / STATE_FILE).read_text())
    document["streams"]["s"]["next_intent"]["r0"] = 1049
    (tmp_path / STATE_FILE).write_text(json.dumps(document))
    with pytest.raises(CheckpointError, match="does not follow"):
        load_states(tmp_path)
