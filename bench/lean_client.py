"""The least an append costs from Python with our stack, with nothing around the request.

Rounds over ``streams`` files: one worker-thread hop reads every file's next
``body`` bytes, one journal write and ``fdatasync`` records the round, then
every append is SigV4-signed (``sink.sigv4``), framed and parsed by h11, and
sent over ``connections`` keep-alive trio sockets, one request at a time per
connection (an h11 client does not pipeline).  No lanes, no task per stream,
no metrics, no partial lines, no rotation checks: an agent that sends one
PUT per append can only pay more.  That cost over the agent's CPU budget is
the most appends a second such an agent could afford, and so the shortest
turn each of ``streams`` waiting streams could get: about 0.7 s here, too
slow for a 1 s p99.  The agent goes below it by sending many streams' small
appends in one request (``agent.append_groups``), where the server offers it.
"""

from __future__ import annotations

import base64
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h11
import trio
from isal import isal_zlib

from sink import sigv4

UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass
class Floor:
    appends: int
    seconds: float
    cpu_seconds: float  # the trio thread's and the reading thread's

    @property
    def cpu_per_append(self) -> float:
        return self.cpu_seconds / self.appends


def _read_round(fds: list[int], offset: int, size: int, cpu: list[float]) -> list[bytes]:
    started = time.thread_time()
    bodies = [os.pread(fd, size, offset) for fd in fds]
    cpu.append(time.thread_time() - started)
    return bodies


def _record_round(journal: int, note: bytes, cpu: list[float]) -> None:
    started = time.thread_time()
    os.write(journal, note)
    os.fdatasync(journal)
    cpu.append(time.thread_time() - started)


class _Sender:
    """One keep-alive connection sending signed appends one after another."""

    def __init__(self, stream: trio.SocketStream, host: str, bucket: str, access_key: str, secret: str) -> None:
        self.stream, self.host, self.bucket = stream, host, bucket
        self.access_key, self.secret = access_key, secret
        self.h11 = h11.Connection(h11.CLIENT)

    async def append(self, key: str, offset: int, body: bytes, amz_date: str) -> None:
        path = f"/{self.bucket}/{key}"
        crc = base64.b64encode(isal_zlib.crc32(body).to_bytes(4, "big")).decode()
        headers = [("host", self.host), ("x-amz-date", amz_date), ("x-amz-content-sha256", UNSIGNED),
                   ("content-length", str(len(body))), ("x-amz-write-offset-bytes", str(offset)),
                   ("x-amz-checksum-crc32", crc)]
        authorization = sigv4.authorization_header("PUT", path, "", headers, [name for name, _ in headers], UNSIGNED,
                                                   amz_date=amz_date, access_key_id=self.access_key, secret=self.secret,
                                                   region="us-east-1")
        headers.append(("authorization", authorization))
        conn = self.h11
        await self.stream.send_all(conn.send(h11.Request(method="PUT", target=path, headers=headers))
                                   + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        while type(event := conn.next_event()) is not h11.EndOfMessage:
            if event is h11.NEED_DATA:
                conn.receive_data(await self.stream.receive_some(65536))
            elif type(event) is h11.Response and event.status_code != 200:
                raise RuntimeError(f"append to {key} at {offset} refused: {event.status_code}")
        conn.start_next_cycle()


async def _floor(port: int, bucket: str, access_key: str, secret: str, workdir: Path, streams: int, connections: int,
                 rounds: int, body: int) -> Floor:
    paths = [workdir / f"lean{i:04d}.log" for i in range(streams)]
    for path in paths:
        path.write_bytes(os.urandom(body * rounds))
    fds = [os.open(path, os.O_RDONLY) for path in paths]
    journal = os.open(workdir / "journal", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    senders = [_Sender(await trio.open_tcp_stream("127.0.0.1", port), f"127.0.0.1:{port}", bucket, access_key, secret)
               for _ in range(connections)]
    thread_cpu: list[float] = []
    try:
        cpu, started = time.thread_time(), time.perf_counter()
        for n in range(rounds):
            bodies = await trio.to_thread.run_sync(_read_round, fds, n * body, body, thread_cpu)
            note = repr([(i, n * body, (n + 1) * body) for i in range(streams)]).encode()
            await trio.to_thread.run_sync(_record_round, journal, note, thread_cpu)
            amz_date = sigv4.amz_date_of(time.time())
            queue = iter(range(streams))

            async def send_some(sender: _Sender) -> None:
                for i in queue:  # shared: each connection takes the next append when it is free
                    await sender.append(f"lean/{i:04d}", n * body, bodies[i], amz_date)

            async with trio.open_nursery() as nursery:
                for sender in senders:
                    nursery.start_soon(send_some, sender)
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu + sum(thread_cpu)
    finally:
        for sender in senders:
            await sender.stream.aclose()
        for fd in (*fds, journal):
            os.close(fd)
    return Floor(streams * rounds, seconds, cpu)


def lean_floor(port: int, bucket: str, access_key: str, secret: str, *, streams: int, connections: int, rounds: int,
               body: int) -> Floor:
    """Run the lean client against the server on ``port`` (in ``bucket``, keys ``lean/NNNN``)."""
    with tempfile.TemporaryDirectory(prefix="lean-") as tmp:
        return trio.run(_floor, port, bucket, access_key, secret, Path(tmp), streams, connections, rounds, body)
