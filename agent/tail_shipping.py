"""tail-to-bucket's three ways of shipping, and how it stops.

* one-shot (``ship_file``): SOURCE up to its size at start in batch-size
  appends; a worker thread reads, encodes and checksums the next body while
  the current one is on the wire: at most two bodies in memory.
* ``--follow`` (``follow_file``): the agent's ``Tailer`` (rotation and
  truncation are handled there, only there) → the agent's batcher (flush on
  bytes or age) → one writer.
* stdin (``ship_stdin``): read as it comes, batched like ``--follow``, to EOF.

Ctrl-C / SIGTERM (``Stopper``): no new append starts; the one in flight
finishes (within ``STOP_GRACE``, or at a second signal).
"""

from __future__ import annotations

import gc
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog
import trio

from agent.batcher import Batch, BatchRules, Chunk, run_batcher
from agent.fingerprint import FileIdentity
from agent.progress import ProgressBar
from agent.tail_source import Failure, Options, Source, read_at
from agent.tailer import BEGINNING, ReadAheadBudget, StartAt, Tailer
from agent.units import MiB
from sink import crc
from sink.append import ObjectWriter
from sink.compress import Codec, Identity

log = structlog.get_logger()

READ_SIZE = 1 * MiB  # tailer / stdin read size in streaming modes
STOP_GRACE = 30.0  # after Ctrl-C / SIGTERM, how long the append in flight may take to finish
STDIN_IDENTITY = FileIdentity(0, 0, 0, "")


@dataclass(frozen=True)
class Body:
    """One append's body, made in a worker thread: what to send, its CRC32, the SOURCE bytes it holds."""

    data: bytes
    crc32: int
    source_bytes: int


def make_body(codec: Codec, fd: int, offset: int, size: int) -> Body:
    """SOURCE [offset, offset + size) read (straight into a new ``bytes``: no copy after), encoded and checksummed.

    Fewer bytes only if SOURCE ends sooner."""
    raw = read_at(fd, offset, size)
    data = codec.encode(raw)
    return Body(data, crc.crc32(data), len(raw))


def _read_some(fd: int, buf: bytearray) -> bytes:
    """Whatever stdin has now (blocks until something or EOF)."""
    n = os.readv(fd, [buf])
    return bytes(memoryview(buf)[:n])


@dataclass
class Stopper:
    """Ctrl-C / SIGTERM: stop taking new work at once; the append in flight goes on."""

    signum: int | None = None
    _idle: set[trio.CancelScope] = field(default_factory=set)

    def request(self, signum: int) -> None:
        self.signum = signum
        for scope in self._idle:
            scope.cancel()

    @contextmanager
    def idle(self) -> Iterator[None]:
        """A wait (for the next chunk) that a stop request interrupts."""
        with trio.CancelScope() as scope:
            if self.signum is not None:
                scope.cancel()
            self._idle.add(scope)
            try:
                yield
            finally:
                self._idle.discard(scope)


async def watch_signals(stopper: Stopper, work: trio.CancelScope, *,
                        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """First Ctrl-C / SIGTERM: ``stopper.request``.  A second one, or STOP_GRACE later: cancel ``work``."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            stopper.request(signum)
            log.info("stop_requested", signal=signal.Signals(signum).name)
            break
        with trio.move_on_after(STOP_GRACE):
            async for _ in signals:  # a second signal: stop now
                break
    work.cancel()


@dataclass
class Shipper:
    """Sends bodies through the writer; counts SOURCE bytes shipped."""

    opts: Options
    writer: ObjectWriter
    progress: ProgressBar
    stopper: Stopper
    shipped: int  # SOURCE offset shipped so far

    async def send(self, body: bytes, source_end: int, *, crc32: int | None = None) -> None:
        """Append ``body`` (``crc32``: its CRC32, if computed already) and count SOURCE up to ``source_end`` shipped."""
        length = await self.writer.append(body, crc32=crc32)
        # httpx's Response and its stream form a reference cycle that holds the
        # request, body included, until the cyclic GC runs: collect the young
        # generations now, or a few past bodies pile up in memory.
        gc.collect(1)
        self.shipped = source_end
        log.info("chunk_shipped", object=self.opts.url, source_offset=source_end, object_length=length, body=len(body))
        self.progress.update(source_end)

    async def next_item(self, channel: trio.MemoryReceiveChannel) -> object | None:  # type: ignore[type-arg]
        """The next item, or None at the end of input or on a stop request."""
        item = None
        with self.stopper.idle():
            try:
                item = await channel.receive()
            except trio.EndOfChannel:
                return None
        return None if self.stopper.signum is not None else item


async def ship_file(shipper: Shipper, source: Source, codec: Codec) -> None:
    """One-shot: SOURCE [shipped, size at start) in batch-size appends.

    A worker thread makes the next body (``make_body``: read, encode, CRC32)
    while the current one is on the wire, then waits until the sender takes
    it, which is once the current append is done: at most two bodies in
    memory, and neither the copy nor the CRC32 runs on the event loop.
    """
    end, size = source.size or 0, shipper.opts.batch_bytes
    bodies_in, bodies_out = trio.open_memory_channel[Body](0)

    async def read_ahead() -> None:
        offset = shipper.shipped
        async with bodies_in:
            while offset < end:
                want = min(size, end - offset)
                body = await trio.to_thread.run_sync(make_body, codec, source.fd, offset, want)
                if body.source_bytes < want:
                    raise Failure(f"{source.name} shrank to {offset + body.source_bytes} bytes while being read "
                                  f"(it had {end}); {shipper.opts.url} holds its first {offset} bytes")
                await bodies_in.send(body)
                del body  # the sender's now: not kept here past its append
                offset += want

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_ahead)
        async with bodies_out:
            while (body := await shipper.next_item(bodies_out)) is not None:
                assert isinstance(body, Body)
                await shipper.send(body.data, shipper.shipped + body.source_bytes, crc32=body.crc32)
                del body  # before the next one is taken
        nursery.cancel_scope.cancel()


async def ship_batches(shipper: Shipper, batches: trio.MemoryReceiveChannel[Batch], codec: Codec,
                       budget: ReadAheadBudget | None) -> None:
    """Streaming modes: one append per batch, in order, until the batches end or a stop."""
    async with batches:
        while (batch := await shipper.next_item(batches)) is not None:
            assert isinstance(batch, Batch)
            body = batch.body()
            if not isinstance(codec, Identity):
                body = await trio.to_thread.run_sync(codec.encode, body)
            await shipper.send(body, shipper.shipped + batch.size)
            if budget is not None:
                budget.release(batch.size)


async def follow_file(shipper: Shipper, source: Source, codec: Codec) -> None:
    """--follow: tailers (one after another if the path vanishes and comes back) → batcher → writer."""
    opts = shipper.opts
    budget = ReadAheadBudget(2 * max(opts.batch_bytes, READ_SIZE))
    chunks_in, chunks_out = trio.open_memory_channel[Chunk](0)
    batches_in, batches_out = trio.open_memory_channel[Batch](0)
    current: list[Tailer] = []
    poke_every = min(max(opts.flush_interval / 4, 0.01), 0.25)

    async def tail_forever() -> None:
        start = StartAt(offset=shipper.shipped, identity=source.identity)
        async with chunks_in:
            while True:
                tailer = Tailer("source", opts.source, chunks_in.clone(), budget, start=start,
                                chunk_size=min(opts.batch_bytes, READ_SIZE), partial_line_timeout=opts.flush_interval)
                current[:] = [tailer]
                await tailer.run()
                log.info("source_gone", path=opts.source)
                current.clear()
                while not os.path.exists(opts.source):  # tail -F: wait for the path to come back
                    await trio.sleep(poke_every)
                start = BEGINNING

    async def poke_forever() -> None:  # a stat per poke: cheap, and works where inotify does not
        while True:
            await trio.sleep(poke_every)
            for tailer in current:
                tailer.poke()

    source.close()  # the tailer opens the path itself (and finds the file we checked by its identity)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tail_forever)
        nursery.start_soon(poke_forever)
        nursery.start_soon(run_batcher, chunks_out, batches_in, BatchRules(opts.batch_bytes, opts.flush_interval / 2))
        await ship_batches(shipper, batches_out, codec, budget)
        nursery.cancel_scope.cancel()


async def ship_stdin(shipper: Shipper, source: Source, codec: Codec) -> None:
    """stdin: chunks as they come, batched on bytes or age, until EOF."""
    opts = shipper.opts
    chunks_in, chunks_out = trio.open_memory_channel[Chunk](0)
    batches_in, batches_out = trio.open_memory_channel[Batch](0)

    async def read_stdin() -> None:
        buf, offset = bytearray(min(opts.batch_bytes, READ_SIZE)), shipper.shipped
        async with chunks_in:
            while data := await trio.to_thread.run_sync(_read_some, source.fd, buf, abandon_on_cancel=True):
                await chunks_in.send(Chunk("stdin", 1, STDIN_IDENTITY, offset, data))
                offset += len(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_stdin)
        nursery.start_soon(run_batcher, chunks_out, batches_in, BatchRules(opts.batch_bytes, opts.flush_interval / 2))
        await ship_batches(shipper, batches_out, codec, None)
        nursery.cancel_scope.cancel()
