"""Durable progress: transitions, atomic replacement, group commit, the state-dir lock."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from agent import checkpoint as checkpoint_module
from agent.checkpoint import (
    STATE_FILE,
    TEMP_FILE,
    Intent,
    StreamState,
    load_states,
    open_checkpoint,
    write_states,
)
from agent.errors import CheckpointConflict, CheckpointError, CheckpointLocked
from agent.fingerprint import identity_of

OLD = identity_of(1, 10, b"old file\n")
NEW = identity_of(1, 11, b"new file\n")


def fresh(stream: str = "/var/log/app.log") -> StreamState:
    return StreamState(stream=stream, key="host/var/log/app.log", identity=OLD, offset=100, object_length=100)


def test_intent_then_landed_moves_both_offsets() -> None:
    state = fresh().with_intent(Intent(OLD, 100, 150, 100, 150))
    assert state.offset == 100  # nothing moves until the append is known to have landed
    state = state.landed()
    assert (state.offset, state.object_length, state.intent) == (150, 150, None)


def test_landed_intent_for_a_new_file_switches_identity() -> None:
    state = fresh().with_intent(Intent(NEW, 0, 30, 100, 130)).landed()
    assert (state.identity, state.offset, state.object_length) == (NEW, 30, 130)


def test_not_landed_keeps_progress_and_clears_intent() -> None:
    state = fresh().with_intent(Intent(OLD, 100, 150, 100, 150)).not_landed()
    assert (state.offset, state.object_length, state.intent) == (100, 100, None)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (lambda s: s.with_intent(Intent(OLD, 100, 150, 90, 140)), "expected 100"),
        (lambda s: s.with_intent(Intent(OLD, 100, 150, 100, 150)).with_intent(Intent(OLD, 150, 160, 150, 160))
         .with_intent(Intent(OLD, 160, 170, 150, 160)), "expected 160"),
        (lambda s: s.with_intent(Intent(OLD, 100, 150, 100, 150)).with_intent(Intent(OLD, 150, 160, 140, 150)), "expected 150"),
        (lambda s: s.with_intent(Intent(OLD, 150, 100, 100, 150)), "backwards"),
        (lambda s: s.landed(), "no append is pending"),
        (lambda s: s.with_intent(Intent(OLD, 100, 150, 100, 150)).rolled("k2"), "cannot roll"),
        (lambda s: s.with_intent(Intent(OLD, 100, 150, 100, 150)).moved(NEW, 0), "cannot move"),
    ],
)
def test_transitions_that_would_lose_or_repeat_bytes_are_refused(step: object, message: str) -> None:
    with pytest.raises(CheckpointConflict, match=message):
        step(fresh())  # type: ignore[operator]


def test_roll_starts_an_empty_object() -> None:
    state = fresh().rolled("host/var/log/app.log.1")
    assert (state.key, state.object_length, state.offset) == ("host/var/log/app.log.1", 0, 100)


def test_states_round_trip_with_intents(tmp_path: Path) -> None:
    states = {
        "a": fresh("a").with_intent(Intent(NEW, 0, 7, 100, 107)),
        "b": StreamState(stream="b", key="k/b", identity=None),
    }
    write_states(tmp_path, states)
    assert load_states(tmp_path) == states
    assert not (tmp_path / TEMP_FILE).exists()


def test_crash_between_temp_write_and_rename_leaves_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = {"a": fresh("a")}
    write_states(tmp_path, old)

    def crash(src: object, dst: object) -> None:
        raise SystemExit("killed between write and rename")

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(SystemExit):
        write_states(tmp_path, {"a": fresh("a").with_intent(Intent(OLD, 100, 200, 100, 200))})
    monkeypatch.undo()
    assert (tmp_path / TEMP_FILE).exists()  # the new state was fully written, never renamed
    assert load_states(tmp_path) == old


def test_a_torn_temp_file_is_ignored_and_cleaned(tmp_path: Path) -> None:
    write_states(tmp_path, {"a": fresh("a")})
    (tmp_path / TEMP_FILE).write_bytes(b'{"version": 1, "streams": {"a": {"ke')  # power cut mid-write
    assert load_states(tmp_path) == {"a": fresh("a")}
    fd = checkpoint_module.lock_state_dir(tmp_path)
    os.close(fd)
    assert not (tmp_path / TEMP_FILE).exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json", "corrupt"),
        (b'{"version": 99, "streams": {}}', "unknown version 99"),
        (b'{"version": 1, "streams": {"a": {"key": "k"}}}', "corrupt"),
        (b'{"version": 1, "streams": {"a": {"key": "k", "identity": null, "offset": -1, "object_length": 0, "intent": null}}}', "corrupt"),
    ],
)
def test_a_damaged_state_file_is_refused_not_reset(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_states(tmp_path)


async def test_saves_are_durable_on_return_and_group_committed(tmp_path: Path) -> None:
    async with open_checkpoint(tmp_path / "state") as checkpoint:
        assert checkpoint.streams == {}

        async def save(i: int) -> None:
            await checkpoint.save(fresh(f"s{i}"))
            # on return the state is on disk, whatever else is still pending
            assert load_states(tmp_path / "state")[f"s{i}"] == fresh(f"s{i}")

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(save, i)
        assert checkpoint.writes <= 3  # 50 saves, one write running and one collecting the rest
        await checkpoint.remove("s0")
    assert set(load_states(tmp_path / "state")) == {f"s{i}" for i in range(1, 50)}


async def test_reopen_loads_what_was_saved(tmp_path: Path) -> None:
    state = fresh().with_intent(Intent(OLD, 100, 120, 100, 120))
    async with open_checkpoint(tmp_path) as checkpoint:
        await checkpoint.save(state)
    async with open_checkpoint(tmp_path) as checkpoint:
        assert checkpoint.get(state.stream) == state


async def test_a_second_agent_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    async with open_checkpoint(tmp_path):
        with pytest.raises(CheckpointLocked, match="in use by another agent"):
            async with open_checkpoint(tmp_path):
                pass
    async with open_checkpoint(tmp_path):  # released on exit
        pass


async def test_a_failed_write_fails_the_save_loudly(tmp_path: Path) -> None:
    async with open_checkpoint(tmp_path) as checkpoint:
        (tmp_path / TEMP_FILE).mkdir()  # the temp file cannot be created: EISDIR, even for root
        with pytest.raises(CheckpointError, match="cannot write"):
            await checkpoint.save(fresh())
        (tmp_path / TEMP_FILE).rmdir()
        with pytest.raises(CheckpointError):
            await checkpoint.save(fresh("other"))  # stays failed: the agent must stop, not guess
    assert load_states(tmp_path) == {}


def test_state_file_is_plain_json(tmp_path: Path) -> None:
    write_states(tmp_path, {"a": fresh("a")})
    document = json.loads((tmp_path / STATE_FILE).read_text())
    assert document["streams"]["a"]["offset"] == 100
