"""Durable per-stream progress: what is shipped, and what is being shipped.

Per stream the agent keeps (DESIGN.md, "Exactly once, end to end"): the file's
identity, the file offset shipped, the object key, the object length it
expects, and at most one *intent* "append file bytes [f0, f1) at object offset
r0, making it r1", recorded before the PUT goes out.  While that append is on
the wire the next one may be recorded too (``next_intent``, from r1 to r2), and
the ones after it whose bytes are already read (``later_intents``, r2 to r3,
...: one write covers several appends), so a busy stream's PUTs do not wait for
a checkpoint write each and its flushes do not queue with the server's at the
disk for every append.  The appends go out in the recorded order, each only
after the one before it landed, so after a crash the object's length says how
many of them landed (r0: none, r1: the first, r2: two, ...; anything else is
a conflict).  DESIGN.md's single intent is the case of one.  The transitions
on ``StreamState`` are pure and refuse steps that would lose or repeat bytes.

Storage (``agent.journal``): a JSON snapshot replaced atomically, and a
journal of the states changed since, one JSON line each, so a write costs
the changed streams' lines and one ``fdatasync``, not every stream's state and
two fsyncs; the journal is folded into a new snapshot when it has grown, when
the checkpoint opens with one, and at a clean stop.  Chosen over SQLite
because the state is small (a few hundred bytes per stream), both files can be
read with ``cat`` when something goes wrong, and a commit costs one flush, as
a SQLite WAL commit would.  Writes are group commits: every ``save`` that
arrives while a write is running goes into the next one, so N streams
acknowledging at once cost one write, not N.  An exclusive ``flock`` on the
state directory keeps a second agent out.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import AsyncIterator, Mapping

import structlog
import trio

from agent import journal
from agent.errors import CheckpointConflict, CheckpointError, CheckpointLocked
from agent.fingerprint import FileIdentity
from agent.journal import STATE_FILE, TEMP_FILE, Journal, compact_due

LOCK_FILE = "checkpoint.lock"
log = structlog.get_logger()


@dataclass(frozen=True)
class Intent:
    """About to append file bytes [f0, f1) of ``identity`` at object offset r0, making it r1."""

    identity: FileIdentity
    f0: int
    f1: int
    r0: int
    r1: int


@dataclass(frozen=True)
class StreamState:
    stream: str  # the stream's name (the path it follows)
    key: str  # the object it appends to
    identity: FileIdentity | None  # the file ``offset`` refers to; None before the first file
    offset: int = 0  # file bytes before this are in the object (or deliberately skipped)
    object_length: int = 0  # the object's length once every recorded append has landed
    intent: Intent | None = None
    next_intent: Intent | None = None  # the append after ``intent``, recorded while ``intent`` is on the wire
    later_intents: tuple[Intent, ...] = ()  # the appends after ``next_intent``, recorded in the same write

    @property
    def pending(self) -> tuple[Intent, ...]:
        """Every recorded append not known to have landed, in the order they go out."""
        if self.intent is None:
            return ()
        if self.next_intent is None:
            return (self.intent,)
        return (self.intent, self.next_intent, *self.later_intents)

    # -- pure transitions ----------------------------------------------------

    def with_intent(self, intent: Intent) -> StreamState:
        """Record an append about to be sent, after those already recorded (it follows the last of them)."""
        if intent.f1 < intent.f0 or intent.r1 < intent.r0 or intent.f0 < 0:
            raise CheckpointConflict(f"{self.stream}: intent ranges are backwards: {intent}")
        pending = self.pending
        expected = pending[-1].r1 if pending else self.object_length
        if intent.r0 != expected:
            which = "next intent" if pending else "intent"
            raise CheckpointConflict(f"{self.stream}: {which} starts at object offset {intent.r0}, expected {expected}")
        if self.intent is None:
            return replace(self, intent=intent)
        if self.next_intent is None:
            return replace(self, next_intent=intent)
        return replace(self, later_intents=(*self.later_intents, intent))

    def landed(self) -> StreamState:
        """The pending append is in the object (200, or a HEAD showing length r1); the next one, if any, is pending now."""
        intent = self._pending()
        later = self.later_intents
        return replace(self, identity=intent.identity, offset=intent.f1, object_length=intent.r1,
                       intent=self.next_intent, next_intent=later[0] if later else None, later_intents=later[1:])

    def not_landed(self) -> StreamState:
        """The pending append is not in the object (a HEAD showed r0): it will be sent again, and so
        will those recorded after it (never sent: each could only follow the one before it)."""
        self._pending()
        return replace(self, intent=None, next_intent=None, later_intents=())

    def only_first(self) -> StreamState:
        """Forget the appends recorded after the pending one (none of them was sent): what goes after it
        will be recorded again before it goes."""
        self._pending()
        return replace(self, next_intent=None, later_intents=())

    def settled_at(self, length: int) -> StreamState | None:
        """The state once the object is known to be ``length`` long (after a restart: a HEAD);
        ``None`` when that length is not one the recorded appends can explain."""
        if length == self.object_length:
            return self.not_landed() if self.intent is not None else self
        state = self
        while state.intent is not None:
            state = state.landed()
            if length == state.object_length:
                return state.not_landed() if state.intent is not None else state
        return None

    def rolled(self, key: str) -> StreamState:
        """Continue in a new, empty object."""
        if self.intent is not None:
            raise CheckpointConflict(f"{self.stream}: cannot roll to {key!r} with an append pending")
        return replace(self, key=key, object_length=0)

    def moved(self, identity: FileIdentity, offset: int) -> StreamState:
        """Follow another file, or skip ahead in one, without shipping (``read_from: end``)."""
        if self.intent is not None:
            raise CheckpointConflict(f"{self.stream}: cannot move to another file with an append pending")
        return replace(self, identity=identity, offset=offset)

    def _pending(self) -> Intent:
        if self.intent is None:
            raise CheckpointConflict(f"{self.stream}: no append is pending")
        return self.intent

    # -- JSON ------------------------------------------------------------------

    @functools.cached_property
    def json_text(self) -> str:
        """``to_json`` as compact JSON, made once per state: a write with a thousand
        streams re-encodes only the few that changed since the last one."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "key": self.key,
            "identity": None if self.identity is None else self.identity.to_json(),
            "offset": self.offset,
            "object_length": self.object_length,
            "intent": _intent_json(self.intent),
        }
        if self.next_intent is not None:  # absent otherwise: files stay as they were for an idle stream
            document["next_intent"] = _intent_json(self.next_intent)
        if self.later_intents:
            document["later_intents"] = [_intent_json(intent) for intent in self.later_intents]
        return document

    @classmethod
    def from_json(cls, stream: str, data: dict[str, object]) -> StreamState:
        identity = data["identity"]
        intent = _intent_from_json(data["intent"])
        next_intent = _intent_from_json(data.get("next_intent"))
        if next_intent is not None and (intent is None or next_intent.r0 != intent.r1):
            raise ValueError(f"next_intent {next_intent} does not follow intent {intent}")
        later = tuple(_intent_from_json(raw) for raw in data.get("later_intents", ()))  # type: ignore[union-attr]
        before = next_intent
        for each in later:
            if before is None or each is None or each.r0 != before.r1:
                raise ValueError(f"later intent {each} does not follow {before}")
            before = each
        key = data["key"]
        if not isinstance(key, str):
            raise ValueError(f"key is not a string: {key!r}")
        return cls(
            stream=stream,
            key=key,
            identity=None if identity is None else FileIdentity.from_json(identity),  # type: ignore[arg-type]
            offset=_int(data["offset"]),
            object_length=_int(data["object_length"]),
            intent=intent,
            next_intent=next_intent,
            later_intents=later,  # type: ignore[arg-type]
        )


def _intent_json(intent: Intent | None) -> dict[str, object] | None:
    if intent is None:
        return None
    return {"identity": intent.identity.to_json(), "f0": intent.f0, "f1": intent.f1, "r0": intent.r0, "r1": intent.r1}


def _intent_from_json(raw: object) -> Intent | None:
    if raw is None:
        return None
    assert isinstance(raw, dict)
    return Intent(FileIdentity.from_json(raw["identity"]), *(_int(raw[k]) for k in ("f0", "f1", "r0", "r1")))


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not an offset: {value!r}")
    return value


# -- the file (blocking; called in worker threads) ------------------------------


def load_states(state_dir: Path) -> dict[str, StreamState]:
    """The last committed state (snapshot and journal); ``{}`` when there is none yet."""
    return _load(state_dir)[0]


def _load(state_dir: Path) -> tuple[dict[str, StreamState], journal.Loaded]:
    try:
        loaded = journal.read(state_dir)
    except OSError as exc:
        raise CheckpointError(f"cannot read the checkpoint in {state_dir}: {exc}") from exc
    except journal.Corrupt as exc:
        raise CheckpointError(str(exc)) from exc
    try:
        states = {name: StreamState.from_json(name, data) for name, data in loaded.streams.items()}  # type: ignore[arg-type]
    except (ValueError, KeyError, TypeError, AssertionError, AttributeError) as exc:
        raise CheckpointError(f"{state_dir / STATE_FILE} is corrupt: {exc!r}") from exc
    return states, loaded


def write_states(state_dir: Path, states: Mapping[str, StreamState]) -> tuple[str, int]:
    """Replace the whole state (a new snapshot, an empty journal); returns the journal's epoch and the snapshot's size."""
    return journal.write_snapshot(state_dir, {name: state.json_text for name, state in states.items()})


def lock_state_dir(state_dir: Path) -> int:
    """Create ``state_dir`` if needed and hold its lock; the fd is the lock."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CheckpointError(f"cannot use state directory {state_dir}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CheckpointLocked(f"{state_dir} is in use by another agent") from None
    (state_dir / TEMP_FILE).unlink(missing_ok=True)  # a write that crashed before its rename
    return fd


# -- the trio side -----------------------------------------------------------------


class Checkpoint:
    """The live state, and group-committed saves of it.  Made by ``open_checkpoint``.

    Group commit without a background task: the first ``save`` that finds no
    write running becomes the writer and writes everything changed so far (a
    journal append, or a new snapshot when one is due); the others wait, and
    one of them writes whatever arrived meanwhile.
    """

    def __init__(self, state_dir: Path, states: dict[str, StreamState], *, epoch: str | None = None,
                 snapshot_size: int = 0) -> None:
        self.state_dir = state_dir
        self._states = states
        self._changed: dict[str, StreamState | None] = {}  # since the last write (None: removed)
        self._journal = Journal(state_dir, epoch) if epoch is not None else None  # None: a snapshot comes first
        self._snapshot_size = snapshot_size
        self._fold_next = False  # the next write is a snapshot (``compact``)
        self._staged = 0  # generation of the newest change in memory
        self._written = 0  # generation on disk
        self._writes = 0
        self._writing = False
        self._lot = trio.lowlevel.ParkingLot()
        self._error: CheckpointError | None = None

    @property
    def streams(self) -> Mapping[str, StreamState]:
        """Every stream's latest state (saved or being saved)."""
        return dict(self._states)

    @property
    def writes(self) -> int:
        """How many times the files were written (tests check group commit with it)."""
        return self._writes

    def get(self, stream: str) -> StreamState | None:
        return self._states.get(stream)

    async def save(self, *states: StreamState) -> None:
        """Return once ``states`` are on disk (with whatever else was saved meanwhile)."""
        for state in states:
            self._states[state.stream] = self._changed[state.stream] = state
        await self._commit()

    async def remove(self, *streams: str) -> None:
        """Forget streams (their file is gone and fully shipped); durable on return."""
        for stream in streams:
            self._states.pop(stream, None)
            self._changed[stream] = None
        await self._commit()

    async def compact(self) -> None:
        """Fold the journal into a new snapshot now (durable on return)."""
        self._fold_next = True
        await self._commit()

    async def fold(self) -> None:
        """At a clean stop: the journal into the snapshot, unless it is empty or writing failed."""
        if self._error is None and ((self._journal is not None and self._journal.size) or self._changed):
            await self.compact()

    async def _commit(self) -> None:
        self._staged += 1
        mine = self._staged
        while self._written < mine:
            if self._error is not None:
                raise self._error
            if self._writing:
                await self._lot.park()
                continue
            self._writing = True
            try:
                await self._write_once()
            finally:
                self._writing = False
                self._lot.unpark_all()
        await trio.lowlevel.checkpoint()

    async def _write_once(self) -> None:
        generation, changes, self._changed = self._staged, self._changed, {}
        try:
            if self._fold_next or self._journal is None or compact_due(self._journal.size, self._snapshot_size):
                self._fold_next = False
                await trio.to_thread.run_sync(self._write_snapshot, dict(self._states))
            else:
                await trio.to_thread.run_sync(_append, self._journal, changes)
        except OSError as exc:
            self._error = CheckpointError(f"cannot write the checkpoint in {self.state_dir}: {exc}")
            log.error("checkpoint_write_failed", state_dir=str(self.state_dir), error=str(exc))
            raise self._error from exc
        self._written = generation
        self._writes += 1

    def _write_snapshot(self, states: dict[str, StreamState]) -> None:
        """(worker thread) A new snapshot and the empty journal it names."""
        epoch, self._snapshot_size = write_states(self.state_dir, states)
        self.close()
        self._journal = Journal(self.state_dir, epoch)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def __repr__(self) -> str:
        journal_size = None if self._journal is None else self._journal.size
        return (
            f"<Checkpoint {self.state_dir} streams={len(self._states)} staged={self._staged} "
            f"written={self._written} writes={self._writes} journal={journal_size}>"
        )


def _append(journal: Journal, changes: Mapping[str, StreamState | None]) -> None:
    journal.append({name: None if state is None else state.json_text for name, state in changes.items()})


@asynccontextmanager
async def open_checkpoint(state_dir: str | Path) -> AsyncIterator[Checkpoint]:
    """Lock ``state_dir`` (creating it), load its state, release the lock on exit.

    A journal found at start is folded into a new snapshot at once (its last
    line may be torn: nothing is ever appended after it), and so is the
    journal at a clean exit: a stopped agent leaves one plain JSON file."""
    directory = Path(state_dir)
    lock_fd = await trio.to_thread.run_sync(lock_state_dir, directory)
    checkpoint: Checkpoint | None = None
    try:
        states, loaded = await trio.to_thread.run_sync(_load, directory)
        log.info("checkpoint_loaded", state_dir=str(directory), streams=len(states), journal=loaded.journal_size)
        checkpoint = Checkpoint(directory, states, epoch=loaded.epoch, snapshot_size=loaded.snapshot_size)
        if loaded.journal_size:
            await checkpoint.compact()
        yield checkpoint
        with trio.CancelScope(shield=True):
            await checkpoint.fold()
    finally:
        if checkpoint is not None:
            checkpoint.close()
        os.close(lock_fd)
