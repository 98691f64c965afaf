"""CPU per small append of the sink's client, by the way it reaches the server.

An agent following a thousand files makes hundreds of 1 kB appends a second,
so the client's CPU per request, not its bandwidth, is what it budgets.
Four ways, each an ``ObjectWriter`` appending 1,000-byte bodies to 100
objects over 4 connections (the agent's ``max_in_flight``), against one fresh
server, in alternating rounds so all see the same neighbours:

* ``AsyncClient.send`` with httpx's own transport (the client before issue 5);
* straight to httpx's transport (what an https endpoint gets);
* straight to ``PlainHTTPTransport`` through httpx's request and response objects;
* ``PlainHTTPTransport.exchange``, no httpx objects (what an http endpoint gets).

The figure is this process's CPU time (user + system, so the kernel's share
of the loopback sends counts) per acknowledged append.
``python -m bench.append_cpu [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx
import trio

from bench.raws3 import RawS3
from sink.append import ObjectWriter
from sink.client import S3Client
from sink.plain_http import PlainHTTPTransport
from sink.sigv4 import SigV4Auth
from tests.support import ACCESS_KEY, REGION, REPO, SECRET_KEY, ServerProcess

Row = tuple[str, str, str, str]
BUCKET = "append-cpu"
CONNECTIONS = 4
OBJECTS = 100
BODY = b"x" * 999 + b"\n"


class _ClientLevelAuth(httpx.Auth):
    """Signs through httpx's auth flow, which sends the request through ``AsyncClient.send``."""

    def __init__(self, signer: SigV4Auth) -> None:
        self.signer = signer

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def, override]
        yield self.signer.sign(request)


def _client(url: str, way: str) -> tuple[httpx.AsyncClient, S3Client]:
    signer = SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION, unsigned_payload=True)
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    if way in ("plain", "direct"):
        transport = PlainHTTPTransport(CONNECTIONS)
        http = httpx.AsyncClient(transport=transport, timeout=60)
        return http, S3Client(http, url, auth=signer, direct=transport if way == "direct" else None)
    http = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(limits=limits), timeout=60,
                             auth=_ClientLevelAuth(signer) if way == "classic" else None)
    return http, S3Client(http, url, auth=None if way == "classic" else signer)


async def _round(url: str, way: str, prefix: str, appends: int) -> tuple[float, float]:
    """(ms of CPU per append, appends per second) of one round."""
    http, client = _client(url, way)
    async with http:
        writers = [ObjectWriter(client, BUCKET, f"{prefix}/{i}") for i in range(OBJECTS)]
        for writer in writers:
            await writer.open()

        async def connection(mine: list[ObjectWriter]) -> None:
            for i in range(appends // CONNECTIONS):
                await mine[i % len(mine)].append(BODY)

        cpu0, wall0 = time.process_time(), time.monotonic()
        async with trio.open_nursery() as nursery:
            for c in range(CONNECTIONS):
                nursery.start_soon(connection, writers[c::CONNECTIONS])
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return cpu / appends * 1e3, appends / wall


WAYS = {
    "classic": "AsyncClient.send, httpx's transport (before)",
    "httpx": "straight to httpx's transport (https endpoints)",
    "plain": "straight to PlainHTTPTransport, httpx objects",
    "direct": "PlainHTTPTransport.exchange (http endpoints)",
}


def measure(quick: bool = False) -> list[Row]:
    rounds, appends = (3, 1000) if quick else (5, 3000)
    results: dict[str, list[tuple[float, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory(dir=REPO) as name:
        server = ServerProcess(Path(name) / "data").start()
        try:
            with RawS3(server.port) as s3:
                s3.create_bucket(BUCKET)
            for r in range(rounds):
                for way in WAYS:
                    results[way].append(trio.run(_round, server.url, way, f"{way}{r}", appends))
        finally:
            server.stop()
    base = median(ms for ms, _ in results["classic"])
    rows: list[Row] = []
    for way, label in WAYS.items():
        ms = median(m for m, _ in results[way])
        rate = median(a for _, a in results[way])
        rows.append((label, f"{ms:.2f} ms CPU per append", f"{ms / base:.2f}x the first; {rate:,.0f} appends/s; rounds: "
                     + ", ".join(f"{m:.2f}" for m, _ in results[way]), ""))
    return rows


if __name__ == "__main__":
    import logging

    import structlog

    from bench.__main__ import print_table

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))  # no line per object
    print_table(f"sink client: 1 kB appends to {OBJECTS} objects over {CONNECTIONS} connections",
                measure(quick="--quick" in sys.argv))
