"""The checkpoint's journal: a write costs the changed streams' lines, a restart replays them, crashes lose nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent import journal
from agent.checkpoint import Intent, StreamState, load_states, open_checkpoint, write_states
from agent.errors import CheckpointError
from agent.fingerprint import identity_of
from agent.journal import JOURNAL_PREFIX, STATE_FILE

FILE = identity_of(1, 10, b"a log file\n")


def state(name: str, offset: int = 0) -> StreamState:
    return StreamState(name, f"host/{name}", FILE, offset, offset)


def journal_files(state_dir: Path) -> list[Path]:
    return sorted(state_dir.glob(f"{JOURNAL_PREFIX}*"))


async def test_a_save_appends_only_the_changed_stream_and_leaves_the_snapshot_alone(tmp_path: Path) -> None:
    write_states(tmp_path, {f"s{i:04d}": state(f"s{i:04d}") for i in range(1000)})
    snapshot = (tmp_path / STATE_FILE).read_bytes()
    async with open_checkpoint(tmp_path) as checkpoint:
        moved = state("s0042", 100).with_intent(Intent(FILE, 100, 150, 100, 150))
        await checkpoint.save(moved)
        assert (tmp_path / STATE_FILE).read_bytes() == snapshot
        [written] = journal_files(tmp_path)
        lines = written.read_bytes().splitlines()
        assert [json.loads(line)["s"] for line in lines] == ["s0042"]  # a few hundred bytes, not 1,000 states
        assert len(written.read_bytes()) < 500 < len(snapshot) // 100
        assert load_states(tmp_path)["s0042"] == moved  # what a restart after kill -9 would see
        await checkpoint.remove("s0001")
        assert "s0001" not in load_states(tmp_path) and len(load_states(tmp_path)) == 999
    # a clean stop folds the journal: one plain JSON file again
    assert journal_files(tmp_path) == []
    document = json.loads((tmp_path / STATE_FILE).read_text())
    assert document["streams"]["s0042"]["intent"]["f1"] == 150 and "s0001" not in document["streams"]


async def test_a_journal_found_at_start_is_replayed_and_folded(tmp_path: Path) -> None:
    epoch, _ = write_states(tmp_path, {"a": state("a"), "b": state("b")})
    journal.Journal(tmp_path, epoch).append({"a": state("a", 7).json_text, "b": None})
    async with open_checkpoint(tmp_path) as checkpoint:
        assert checkpoint.streams == {"a": state("a", 7)}
        assert journal_files(tmp_path) == []  # folded before anything could be appended after a torn line
        assert load_states(tmp_path) == {"a": state("a", 7)}


def test_a_last_line_torn_by_a_crash_is_ignored(tmp_path: Path) -> None:
    epoch, _ = write_states(tmp_path, {"a": state("a")})
    path = tmp_path / f"{JOURNAL_PREFIX}{epoch}"
    journal.Journal(tmp_path, epoch).append({"a": state("a", 5).json_text})
    with path.open("ab") as f:
        f.write(b'{"s":"a","v":{"key":"host/a","ide')  # the write that never returned
    assert load_states(tmp_path) == {"a": state("a", 5)}


def test_a_damaged_line_before_the_last_is_corruption(tmp_path: Path) -> None:
    epoch, _ = write_states(tmp_path, {"a": state("a")})
    path = tmp_path / f"{JOURNAL_PREFIX}{epoch}"
    path.write_bytes(b"not json\n" + b'{"s":"a","v":' + state("a", 5).json_text.encode() + b"}\n")
    with pytest.raises(CheckpointError, match="line 1 is corrupt"):
        load_states(tmp_path)


def test_a_journal_the_snapshot_does_not_name_is_stale(tmp_path: Path) -> None:
    """A compaction that crashed after its rename, before removing the old journal: its lines are in the snapshot."""
    old_epoch, _ = write_states(tmp_path, {"a": state("a")})
    old = journal.Journal(tmp_path, old_epoch)
    old.append({"a": state("a", 5).json_text})
    lines = old.path.read_bytes()
    write_states(tmp_path, {"a": state("a", 9)})
    old.path.write_bytes(lines)  # as if never removed
    assert load_states(tmp_path) == {"a": state("a", 9)}


async def test_a_grown_journal_is_folded_into_a_new_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(journal, "COMPACT_MIN", 2000)
    async with open_checkpoint(tmp_path) as checkpoint:
        epochs = set()
        for offset in range(1, 40):
            await checkpoint.save(state("a", offset), state("b", offset))
            epochs.add(json.loads((tmp_path / STATE_FILE).read_text())["journal"])
            assert load_states(tmp_path) == {"a": state("a", offset), "b": state("b", offset)}
            assert len(journal_files(tmp_path)) <= 1
        assert len(epochs) > 2  # compacted more than once, never more than ~2000 bytes of journal
        assert all(p.stat().st_size <= 2000 + 1000 for p in journal_files(tmp_path))


def test_state_files_from_before_the_journal_still_load(tmp_path: Path) -> None:
    document = {"version": 1, "streams": {"a": state("a", 3).to_json()}}
    (tmp_path / STATE_FILE).write_text(json.dumps(document))
    assert load_states(tmp_path) == {"a": state("a", 3)}
