"""kill -9 the agent at random moments while many streams' appends share AppendObjects requests.

Thirty logs grow a few lines at a time, so turns start together and their
appends travel in shared requests (``agent.append_groups``).  The agent is
killed over and over at random moments; after every kill each object must be
a prefix of its log, and at the end equal to it: an item whose answer was lost
with the process is settled at the next start like any PUT's (the intent is on
disk before the request goes).
"""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

import httpx
import pytest
import trio

from tests.agent.agent_support import HOST, AgentProcess, config_document, write_config

FILES = 30
SHARED = 'tailbucket_requests_total{operation="AppendObjects",status="200"}'

KILLS = 20
SEED = int(os.environ.get("TB_CRASH_SEED", "20302"))


class ScatteredWriter:
    """Appends a few numbered lines at a time to one of ``FILES`` logs, chosen at random."""

    def __init__(self, directory: Path, rng: random.Random) -> None:
        self.paths = [directory / f"s{i:02d}.log" for i in range(FILES)]
        self.rng = rng
        self.lines = 0
        self.stop = threading.Event()

    def run(self) -> None:
        outs = [open(path, "ab") for path in self.paths]
        try:
            while not self.stop.is_set():
                out = self.rng.choice(outs)
                out.write(b"".join(b"%08d %s\n" % (self.lines + i, b"y" * self.rng.randrange(60)) for i in range(3)))
                out.flush()
                self.lines += 3
                self.stop.wait(0.001)  # the writer's pace
        finally:
            for out in outs:
                out.close()


def shared_requests(url: str) -> float:
    """AppendObjects requests the server has answered 200 (its metrics; other tests' count too)."""
    text = httpx.get(f"{url}/_tailbucket/metrics").text
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(SHARED))


@pytest.mark.slow
async def test_kill_9_loop_while_many_streams_share_requests(server, s3, bucket, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    logs = tmp_path / "logs"
    logs.mkdir()
    writer = ScatteredWriter(logs, rng)
    for path in writer.paths:
        path.write_bytes(b"")
    document = config_document(tmp_path, server.url, bucket, partial_line_timeout="100ms")
    document["log"] = {"format": "json", "level": "debug"}
    config = write_config(tmp_path / "agent.yaml", document)

    async def stored() -> dict[str, bytes]:
        def get(name: str) -> bytes:
            try:
                return s3.get_object(Bucket=bucket, Key=f"{HOST}/{name}")["Body"].read()
            except s3.exceptions.NoSuchKey:
                return b""

        return await trio.to_thread.run_sync(lambda: {p.name: get(p.name) for p in writer.paths})

    shared_before = shared_requests(server.url)
    async with trio.open_nursery() as nursery:
        try:
            for kill in range(KILLS):
                agent = await AgentProcess.start(config)
                try:
                    if kill == 0:
                        await agent.event("agent_ready")
                        nursery.start_soon(lambda: trio.to_thread.run_sync(writer.run))
                    elif rng.random() < 0.75:  # most kills while shipping, the rest during start-up
                        await agent.event("agent_ready")
                    await trio.sleep(rng.uniform(0.1, 0.7))  # a random moment, not a wait for anything
                finally:
                    await agent.close()  # SIGKILL
                for name, got in (await stored()).items():
                    assert (logs / name).read_bytes().startswith(got), f"{name}: the object is not a prefix of the log"
        finally:
            writer.stop.set()
    assert shared_requests(server.url) > shared_before  # the agents killed were sharing requests

    agent = await AgentProcess.start(config)
    try:
        await agent.event("agent_ready")
        with trio.fail_after(60):
            while (got := await stored()) != {p.name: p.read_bytes() for p in writer.paths}:
                for name, data in got.items():
                    assert (logs / name).read_bytes().startswith(data)
                await agent.event("append_acked")  # look again once something more landed
    finally:
        await agent.close()
