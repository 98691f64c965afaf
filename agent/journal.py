"""The checkpoint's files: a snapshot of every stream, and a journal of the streams changed since.

Rewriting every stream's state for each intent costs a thousand streams'
JSON and two fsyncs (file, directory) per write.  So a write appends only
the states that changed, one JSON line each, to the journal and
``fdatasync``s it: one flush, a few hundred bytes.  When the journal has
grown past a few times the snapshot (``compact_due``), or at a clean stop,
the whole state goes to a new snapshot instead (temp file, fsync, rename,
fsync the directory), which names a new, empty journal.

* ``checkpoint.json``: ``{"version": 1, "journal": EPOCH, "streams": {...}}``
  (plain JSON, ``cat``-able; files without ``journal`` have none).
* ``checkpoint.journal.EPOCH``: lines ``{"s": NAME, "v": STATE}`` (``v``
  null: the stream was removed), later lines win.  A journal whose epoch the
  snapshot does not name is stale (a compaction crashed before removing it)
  and ignored.  A last line cut short by a crash is ignored: its write never
  returned, so nothing was sent on its strength.  Damage anywhere else is
  corruption.

Blocking functions (worker threads); states travel as JSON text and dicts,
``agent.checkpoint`` turns them into ``StreamState``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, NamedTuple

from sink.durable import fsync_dir

STATE_FILE = "checkpoint.json"
TEMP_FILE = "checkpoint.json.tmp"
JOURNAL_PREFIX = "checkpoint.journal."
VERSION = 1
COMPACT_MIN = 1 << 20  # bytes of journal before a compaction is due, at least ...
COMPACT_RATIO = 4  # ... and this many snapshots' worth


class Corrupt(ValueError):
    """A state file that cannot be trusted (the message says where)."""


def compact_due(journal_size: int, snapshot_size: int) -> bool:
    return journal_size > max(COMPACT_MIN, COMPACT_RATIO * snapshot_size)


class Loaded(NamedTuple):
    streams: dict[str, object]  # every stream's JSON document: the snapshot's, then the journal's lines
    epoch: str | None  # the journal the snapshot names (None: no snapshot, or one from before journals)
    journal_size: int
    snapshot_size: int


def read(state_dir: Path) -> Loaded:
    """What the files say.  ``OSError`` if one cannot be read, ``Corrupt`` if one cannot be trusted."""
    try:
        raw = (state_dir / STATE_FILE).read_bytes()
    except FileNotFoundError:
        return Loaded({}, None, 0, 0)
    try:
        document = json.loads(raw)
        if document.get("version") != VERSION:
            raise Corrupt(f"{state_dir / STATE_FILE}: unknown version {document.get('version')!r}")
        streams = dict(document["streams"])
        epoch = document.get("journal")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        if isinstance(exc, Corrupt):
            raise
        raise Corrupt(f"{state_dir / STATE_FILE} is corrupt: {exc!r}") from exc
    if epoch is None:
        return Loaded(streams, None, 0, len(raw))
    try:
        data = (state_dir / f"{JOURNAL_PREFIX}{epoch}").read_bytes()
    except FileNotFoundError:
        return Loaded(streams, str(epoch), 0, len(raw))
    lines = data.split(b"\n")
    for number, line in enumerate(lines[:-1], 1):  # the part after the last newline was never complete
        try:
            record = json.loads(line)
            streams[record["s"]] = record["v"]
        except (ValueError, KeyError, TypeError) as exc:
            if number == len(lines) - 1:
                break  # the last write, torn by a crash before its flush returned
            raise Corrupt(f"{state_dir / JOURNAL_PREFIX}{epoch} line {number} is corrupt: {exc!r}") from exc
    return Loaded({name: doc for name, doc in streams.items() if doc is not None}, str(epoch), len(data), len(raw))


def write_snapshot(state_dir: Path, texts: Mapping[str, str]) -> tuple[str, int]:
    """Replace the snapshot atomically with ``texts`` (name -> state JSON) and a new, empty journal;
    remove the old journals.  Returns (the new epoch, the snapshot's size)."""
    epoch = os.urandom(6).hex()
    streams = ",".join(f"{json.dumps(name)}:{text}" for name, text in sorted(texts.items()))
    data = f'{{"version":{VERSION},"journal":"{epoch}","streams":{{{streams}}}}}'.encode()
    temp = state_dir / TEMP_FILE
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, state_dir / STATE_FILE)
    fsync_dir(state_dir)
    for stale in state_dir.glob(f"{JOURNAL_PREFIX}*"):
        stale.unlink(missing_ok=True)
    return epoch, len(data)


class Journal:
    """Appends to ``checkpoint.journal.EPOCH`` (created, durably, by the first append)."""

    def __init__(self, state_dir: Path, epoch: str, size: int = 0) -> None:
        self.path = state_dir / f"{JOURNAL_PREFIX}{epoch}"
        self.size = size
        self._fd: int | None = None

    def append(self, changes: Mapping[str, str | None]) -> None:
        """One line per changed stream (``None``: removed), then ``fdatasync``: durable on return."""
        data = "".join(f'{{"s":{json.dumps(name)},"v":{"null" if text is None else text}}}\n'
                       for name, text in changes.items()).encode()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            fsync_dir(self.path.parent)  # the new file's name is durable too
        _write_all(self._fd, data)
        os.fdatasync(self._fd)
        self.size += len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
