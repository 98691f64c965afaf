"""Which paths are streams, each with its tailer: discovery, start positions, stops and reloads.

A stream is a path an input covers; its tailer follows whatever file the
path names (rotation, truncation).  Where a tailer starts:

* a stream in the checkpoint: where its state says, once an append recorded
  before a restart is settled (``Shipper.resolve``);
* a new path found at start-up (or when a reload adds its input): the
  input's ``read_from``; a path appearing later: byte 0;
* a stream stopped earlier in this run (a reload changed its input): where
  its last tailer handed off (``Tailer.sent``), so bytes still in transit
  are neither repeated nor skipped; one whose file was deleted and read to
  the end: byte 0 of the new file.

A new path whose file another stream reads or has read (a rotated name that
the glob also matches, a hard link) is skipped: shipping it would copy the
same bytes twice.

Tailers are poked in rounds, paced to the shipper's turn interval (reading
more often than a stream can ship only costs CPU): each round stats every
tailed path in one worker-thread call and notes the paths whose file grew or
changed, and those the watcher named (a rename, a deletion, a rescan).  A
file that grew since the last round, if its stream neither waits for a turn
nor is in one, takes its place in line at once, before it is read
(``Shipper.expect``; a path seen for the first time, or named by the
watcher, is read at once instead), and so does every
stream as its turn ends.  A waiting stream is read as its turn comes within
``LEAD`` (checked every ``LEAD / 4``; at once when its place is that near
already), so each append carries what was written until ``LEAD`` before it,
and a busy stream costs one read per append (it was two: one to queue it,
one before its turn).  A place whose turn comes with nothing read passes
(its token spent: that gives the read the turns ahead's time to land).  After a quiet round the
pause doubles, up to half a second, so idle files cost next to nothing and
a line after a quiet spell is still read within the second.  The watcher
does not report writes: with a thousand busy files, one event per write
cost more than all the reading.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from datetime import datetime, timezone
from typing import Callable, Iterable

import structlog
import trio

from agent import events
from agent.batcher import Chunk, ChunkHandover
from agent.checkpoint import Checkpoint, StreamState
from agent.config import AgentConfig, InputConfig
from agent.errors import KeyRenderError
from agent.file_calls import FileCalls
from agent.fingerprint import FileIdentity, Probe, matches, probe_path, unreadable_reason
from agent.lanes import Route
from agent.metrics import AgentMetrics
from agent.scanner import Scanner
from agent.shipper import Shipper
from agent.tailer import BEGINNING, ReadAheadBudget, StartAt, Tailer
from agent.units import KiB, MiB
from agent.watcher import Watcher

log = structlog.get_logger()
MIN_CHUNK = 4 * KiB
MAX_CHUNK = 1 * MiB
MAX_POKE_PAUSE = 0.5  # seconds between two rounds at most (also after quiet rounds)
MIN_POKE_PAUSE = 0.01  # seconds between two rounds at least: a lone stream is not stat'ed in a busy loop
POKE_PAUSE_PER_FILE = 100e-6  # and 0.1 s per thousand files: a round's stats stay a few % of a core
LEAD = 0.1  # seconds before its turn a waiting stream is read (the read must reach the shipper before the turn)
FILE_THREADS = 4  # worker-thread hops under way at once for the tailers' reads and stats
_Claims = dict[tuple[int, int], list[tuple[str, FileIdentity]]]
_Look = tuple[int, int, int, int] | None  # (dev, inode, size, mtime) of what a path names; None: nothing


def look_all(paths: list[str]) -> list[_Look]:
    """What each path names now, for a round's comparison.  Blocking."""
    out: list[_Look] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return out


def signature(spec: InputConfig) -> object:
    """What makes two inputs the same for a reload: everything but the position in the list
    (unless the position is what ``{input}`` renders)."""
    return (replace(spec, index=0), spec.label)


class Streams:
    """The live tailers.  ``run`` is the component; ``stop`` ends it (the chunk channel closes)."""

    def __init__(self, config: AgentConfig, shipper: Shipper, checkpoint: Checkpoint, budget: ReadAheadBudget,
                 chunks: trio.MemorySendChannel[Chunk] | ChunkHandover, *, host: str, metrics: AgentMetrics) -> None:
        self.config = config
        self.inputs = config.inputs
        self.scanner = Scanner(config.inputs)
        self.shipper = shipper
        self.checkpoint = checkpoint
        self.budget = budget
        self.host = host
        self.metrics = metrics
        self._chunks = chunks
        self._tailers: dict[str, Tailer] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._exited: dict[str, trio.Event] = {}  # set when a path's last tailer task has returned
        self._handoff: dict[str, StartAt] = {}  # where a stopped stream continues
        self._input_of: dict[str, InputConfig] = {}
        self._starting: set[str] = set()
        self._failed: set[str] = set()
        self._skipped: set[tuple[str, int, int]] = set()  # (path, dev, inode) reported as read by another stream
        self._unreadable: set[tuple[str, str]] = set()  # (path, reason) already warned about
        self._pokes: set[str] = set()  # named by the watcher: poked in the next round
        self._near: set[str] = set()  # waiting streams read as their turns came near (``_poke_before_turns``)
        self._watch_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._expected = 1  # streams expected: sizes each tailer's share of the read-ahead
        self._file_calls = FileCalls(FILE_THREADS)  # the tailers' reads and stats share worker-thread hops
        shipper.on_expected = self._read_if_near

    @property
    def tailers(self) -> dict[str, Tailer]:
        return dict(self._tailers)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every covered path's stream, then follow the watcher until ``stop``."""
        async with self._chunks:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._file_calls.run)
                await self._start_found(range(len(self.inputs)))
                await nursery.start(self._watch, self.scanner)
                nursery.start_soon(self._poke_paced)
                nursery.start_soon(self._poke_before_turns)
                task_status.started()

    def stop(self) -> None:
        """Stop watching and every tailer; held partial lines are read again at the next start."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def stop_stream(self, path: str, *, failed: bool = False) -> None:
        """Stop one stream's tailer (its queued batches still ship); ``failed``: not again this run."""
        if failed:
            self._failed.add(path)
        scope = self._scopes.pop(path, None)
        self._tailers.pop(path, None)
        self._input_of.pop(path, None)
        if scope is not None:
            scope.cancel()
            log.info(events.STREAM_STOPPED, stream=path, failed=failed)

    async def reconfigure(self, inputs: tuple[InputConfig, ...]) -> None:
        """Apply a reload: streams of removed or changed inputs stop, new inputs start, the rest is untouched."""
        before = {signature(spec) for spec in self.inputs}
        self.inputs, self.scanner = inputs, Scanner(inputs)
        for path in list(self._tailers):
            index = self.scanner.match(path)
            if index is None or signature(inputs[index]) != signature(self._input_of[path]):
                self.stop_stream(path)
            else:
                self._input_of[path] = inputs[index]
                self.shipper.add_stream(Route(path, self.host, inputs[index]), self.shipper.lane(path).state)  # type: ignore[union-attr]
        self._watch_scope.cancel()
        # Files there now first (``read_from`` applies to new inputs), then events for whatever comes next.
        await self._start_found(i for i, spec in enumerate(inputs) if signature(spec) not in before)
        assert self._nursery is not None
        await self._nursery.start(self._watch, self.scanner)

    # -- discovery -----------------------------------------------------------------------

    async def _start_found(self, fresh_inputs: Iterable[int]) -> None:
        """Start a stream for every covered path that has none; ``read_from`` applies to ``fresh_inputs``."""
        fresh = set(fresh_inputs)
        found = await trio.to_thread.run_sync(self.scanner.scan)
        self._expected = max(self._expected, len(found))
        claims = self._claims()
        nursery = self._nursery
        assert nursery is not None

        async def start_one(path: str, index: int) -> None:
            await nursery.start(self._open_stream, path, self.inputs[index], index in fresh, claims)

        async with trio.open_nursery() as starting:  # in parallel (their first states share writes)
            for path, index in found.items():
                if self._startable(path):
                    starting.start_soon(start_one, path, index)

    async def _watch(self, scanner: Scanner, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        watcher = Watcher(scanner, mode=cfg.watch, poll_interval=cfg.poll_interval, rescan_interval=cfg.rescan_interval)
        with trio.CancelScope() as scope:
            self._watch_scope = scope
            async with trio.open_nursery() as nursery:
                await nursery.start(watcher.run)
                task_status.started()
                while True:
                    self._on_changes(await watcher.changes())

    def _on_changes(self, dirty: set[str]) -> None:
        claims: _Claims | None = None
        assert self._nursery is not None
        for path in dirty:
            if path in self._tailers:
                self._pokes.add(path)
                continue
            index = self.scanner.match(path)
            if index is None or not self._startable(path):
                continue
            claims = self._claims() if claims is None else claims
            self._nursery.start_soon(self._open_stream, path, self.inputs[index], False, claims)

    async def _poke_paced(self) -> None:
        """Rounds: note the paths that changed (or that the watcher named); poke those not waiting for a turn."""
        before: dict[str, _Look] = {}
        pause = MIN_POKE_PAUSE
        while True:
            paths = list(self._tailers)
            now = dict(zip(paths, await self._file_calls(look_all, paths)))
            grew = {path for path, look in now.items() if path in before and look != before[path]}
            # Seen for the first time (a new stream, the first round) or named by the watcher (a rename, a
            # deletion, a rescan): read now.  A file that changed since the last round takes its place in line.
            named = {path for path in now if path not in before} | self._pokes
            self._pokes = set()
            changed = grew | named
            before = now
            # Twice per turn of a stream is often enough: what is read meanwhile goes out in the same append.
            # After a quiet round the pause doubles (up to MAX_POKE_PAUSE): idle files cost next to nothing.
            busy = max(MIN_POKE_PAUSE, POKE_PAUSE_PER_FILE * len(paths), self.shipper.order.interval() / 2)
            pause = min(MAX_POKE_PAUSE, busy if changed else max(busy, 2 * pause))
            waiting = self.shipper.order.beyond(0)  # read as their turns come near (``_poke_before_turns``)
            lead = self._lead_turns()
            for path in changed - waiting:
                tailer = self._tailers.get(path)
                if tailer is None:
                    continue
                if path in named:
                    self._read_now(path, tailer)
                    continue
                lane = self.shipper.lane(path)
                if lane is not None and lane.busy:
                    continue  # in a turn: expected again as it ends
                place = self.shipper.expect(path)  # a place in line now, read as it comes near
                if place is None or place < lead:
                    self._read_now(path, tailer)
            await trio.sleep(pause)

    async def _poke_before_turns(self) -> None:
        """Read each waiting stream as its turn comes within ``LEAD``: its append carries what was written
        until then.  A stream takes its place in line before it is read (``Shipper.expect``: when a round
        sees its file change, and again as each of its turns ends), so one read per append is enough."""
        while True:
            near = set(self.shipper.order.within(self._lead_turns()))
            for path in near - self._near:  # come near since the last look
                tailer = self._tailers.get(path)
                if tailer is not None:
                    tailer.poke()
            self._near = near
            await trio.sleep(LEAD / 4)

    def _read_if_near(self, path: str, place: int) -> None:
        """``Shipper.on_expected``: a stream back in line as its turn ended is read now if its turn is near."""
        tailer = self._tailers.get(path)
        if tailer is not None and place < self._lead_turns():
            self._read_now(path, tailer)

    def _read_now(self, path: str, tailer: Tailer) -> None:
        tailer.poke()
        self._near.add(path)  # not again as ``_poke_before_turns`` finds it near

    def _lead_turns(self) -> int:
        return math.ceil(LEAD * self.shipper.order.rate)

    def _startable(self, path: str) -> bool:
        return path not in self._tailers and path not in self._starting and path not in self._failed

    def _claims(self) -> _Claims:
        """Every file some stream reads, has read, or will resume: (dev, inode) -> (stream, identity)."""
        index: _Claims = {}

        def add(stream: str, identity: FileIdentity | None) -> None:
            if identity is not None:
                index.setdefault((identity.dev, identity.ino), []).append((stream, identity))

        for stream, state in self.checkpoint.streams.items():
            add(stream, state.identity)
        for stream, lane in self.shipper.lanes.items():
            add(stream, lane.state.identity)
        for stream, tailer in self._tailers.items():
            for identity in (tailer.identity, *tailer.files_done):
                add(stream, identity)
        return index

    async def _warn_if_unreadable(self, path: str) -> None:
        """A matching file the agent may not read is skipped: say so once, naming the file and why."""
        reason = await trio.to_thread.run_sync(unreadable_reason, path)
        if reason is not None and (path, reason) not in self._unreadable:
            self._unreadable.add((path, reason))
            log.warning(events.FILE_UNREADABLE, path=path, error=reason)

    @staticmethod
    def _claimed_by(claims: _Claims, path: str, probe: Probe) -> str | None:
        for stream, identity in claims.get((probe.dev, probe.ino), ()):
            if stream != path and matches(identity, probe.dev, probe.ino, probe.head):
                return stream
        return None

    # -- one stream -----------------------------------------------------------------------

    async def _open_stream(self, path: str, spec: InputConfig, fresh: bool, claims: _Claims,
                           *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Decide where ``path`` starts and start its tailer (``started`` early if that must wait)."""
        self._starting.add(path)
        started = False

        def let_others_go() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            probe = await self._file_calls(probe_path, path)
            if probe is None:
                await self._warn_if_unreadable(path)
            owner = None if probe is None else self._claimed_by(claims, path, probe)
            if probe is None or owner is not None:
                if owner is not None and (path, probe.dev, probe.ino) not in self._skipped:  # type: ignore[union-attr]
                    self._skipped.add((path, probe.dev, probe.ino))  # type: ignore[union-attr]
                    log.info(events.STREAM_SKIPPED, path=path, read_by=owner)
                return
            claims.setdefault((probe.dev, probe.ino), []).append((path, probe.identity))
            start = await self._start_position(path, spec, fresh, probe, let_others_go)
            if start is None:
                return
            tailer = Tailer(path, path, self._chunks.clone(), self.budget, start=start, chunk_size=self._chunk_size(),
                            partial_line_timeout=self.config.partial_line_timeout, run_sync=self._file_calls)
            self._input_of[path] = spec
            assert self._nursery is not None
            await self._nursery.start(self._run_tailer, tailer)
            log.info(events.STREAM_STARTED, stream=path, key=self.shipper.lane(path).state.key,  # type: ignore[union-attr]
                     offset=tailer.offset, identity=str(tailer.identity))
        finally:
            self._starting.discard(path)
            let_others_go()

    async def _start_position(self, path: str, spec: InputConfig, fresh: bool, probe: Probe,
                              let_others_go: Callable[[], None]) -> StartAt | None:
        route = Route(path, self.host, spec)
        lane = self.shipper.lane(path)
        if lane is None:
            state = self.checkpoint.get(path)
            if state is None:
                try:
                    key = route.base_key(datetime.now(timezone.utc))
                except KeyRenderError as exc:
                    self._failed.add(path)
                    log.error(events.STREAM_FAILED, stream=path, error=str(exc), error_type=type(exc).__name__)
                    return None
                offset = probe.size if fresh and spec.read_from == "end" else 0
                lane = self.shipper.add_stream(route, StreamState(path, key, probe.identity, offset))
                # On disk before the first byte is read: after a crash, a stream the checkpoint does not
                # know would be "present at start-up", and read_from: end would skip what it had read.
                await self.shipper.save(durable=True)
            else:
                lane = self.shipper.add_stream(route, state)
        else:
            self.shipper.add_stream(route, lane.state)
        exited = self._exited.get(path)
        if lane.state.intent is not None or (exited is not None and not exited.is_set()):
            let_others_go()  # settling takes the sink (or the old tailer's exit): the others go on meanwhile
            if exited is not None:
                await exited.wait()
            if await self.shipper.resolve(path) is None:
                self._failed.add(path)
                return None
        if path in self._handoff:
            return self._handoff.pop(path)
        state = lane.state
        return BEGINNING if state.identity is None else StartAt(state.offset, state.identity)

    async def _run_tailer(self, tailer: Tailer, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = tailer.path
        exited = self._exited[path] = trio.Event()
        with trio.CancelScope() as scope:
            self._tailers[path], self._scopes[path] = tailer, scope
            self.metrics.files_watched.set(len(self._tailers))
            self.shipper.notify()
            try:
                await tailer.run(task_status=task_status)
            finally:
                if self._tailers.get(path) is tailer:
                    del self._tailers[path], self._scopes[path]
                self.metrics.files_watched.set(len(self._tailers))
                # Deleted and read to the end: a new file at the path starts at 0.  Stopped: go on from here.
                self._handoff[path] = BEGINNING if not scope.cancel_called else StartAt(tailer.sent, tailer.identity)
                exited.set()
                self.shipper.notify()
        if not scope.cancel_called:
            log.info(events.STREAM_ENDED, stream=path, offset=tailer.sent)

    def _chunk_size(self) -> int:
        """Each tailer's read buffer: a share of the read-ahead budget, so many streams stay small in memory."""
        streams = max(self._expected, len(self._tailers) + 1)
        share = self.config.max_read_ahead // (16 * streams)
        return max(MIN_CHUNK, min(MAX_CHUNK, self.config.batch.max_bytes, share))

    def __repr__(self) -> str:
        return f"<Streams tailers={len(self._tailers)} starting={len(self._starting)} failed={len(self._failed)}>"
