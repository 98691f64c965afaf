"""kill -9 the agent at random moments while a writer appends and rotates: the object is the log, exactly.

The writer (a thread) appends lines to ``app.log`` and rotates it by rename
(``app.log.1``, ``app.log.2``... never deleted, so nothing is lost while the
agent is down).  The agent process is started and killed over and over, at
random points of its start-up and of its shipping.  After every kill the
object must be a prefix of the logs (never a byte twice, never one skipped);
at the end it must be all of them: the rotated files in order, then the live
one.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest
import trio

from tests.agent.agent_support import HOST, AgentProcess, config_document, write_config

KILLS = 22
SEED = int(os.environ.get("TB_CRASH_SEED", "20301"))


class RotatingWriter:
    """Appends numbered lines to ``app.log``; renames it to ``app.log.N`` now and then."""

    def __init__(self, directory: Path, rng: random.Random) -> None:
        self.directory = directory
        self.rng = rng
        self.rotations = 0
        self.lines = 0
        self.stop = threading.Event()
        self._rotating = threading.Lock()  # ``everything`` must not read the files in the middle of a rotation

    @property
    def live(self) -> Path:
        return self.directory / "app.log"

    def run(self) -> None:
        next_rotation = time.monotonic() + self.rng.uniform(0.2, 0.8)
        with open(self.live, "ab") as out:
            while not self.stop.is_set():
                batch = b"".join(b"%08d %s\n" % (self.lines + i, b"x" * self.rng.randrange(80)) for i in range(self.rng.randrange(1, 30)))
                out.write(batch)
                out.flush()
                self.lines += batch.count(b"\n")
                if time.monotonic() >= next_rotation:
                    with self._rotating:
                        self.rotations += 1
                        out.close()
                        self.live.rename(self.directory / f"app.log.{self.rotations}")
                        out = open(self.live, "ab")
                    next_rotation = time.monotonic() + self.rng.uniform(0.2, 0.8)
                self.stop.wait(0.002)  # the writer's pace
        out.close()

    def everything(self) -> bytes:
        """The stream's bytes: rotated files oldest first, then the live file (between two rotations: one that
        happened while the files were read would leave the file it made out)."""
        with self._rotating:
            rotated = [self.directory / f"app.log.{n}" for n in range(1, self.rotations + 1)]
            return b"".join(p.read_bytes() for p in rotated) + self.live.read_bytes()


@pytest.mark.slow
async def test_kill_9_loop_while_writing_and_rotating(server, s3, bucket, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    logs = tmp_path / "logs"
    logs.mkdir()
    document = config_document(tmp_path, server.url, bucket, partial_line_timeout="100ms", rescan_interval="1s",
                               batch={"max_bytes": "32KiB", "max_wait": "50ms"})
    document["log"] = {"format": "json", "level": "debug"}
    config = write_config(tmp_path / "agent.yaml", document)
    writer = RotatingWriter(logs, rng)

    async def stored() -> bytes:
        def get() -> bytes:
            try:
                return s3.get_object(Bucket=bucket, Key=f"{HOST}/app.log")["Body"].read()
            except s3.exceptions.NoSuchKey:
                return b""

        return await trio.to_thread.run_sync(get)

    killed_shipping = 0
    writer.live.write_bytes(b"")
    async with trio.open_nursery() as nursery:
        try:
            for kill in range(KILLS):
                agent = await AgentProcess.start(config)
                try:
                    if kill == 0:  # the first start records the stream; files rotated before it are not its
                        await agent.event("agent_ready")
                        nursery.start_soon(lambda: trio.to_thread.run_sync(writer.run))
                    if rng.random() < 0.75:  # most kills while shipping, the rest during start-up
                        if kill:
                            await agent.event("agent_ready")
                        killed_shipping += 1
                    await trio.sleep(rng.uniform(0.0, 0.6))  # a random moment, not a wait for anything
                finally:
                    await agent.close()  # SIGKILL
                got = await stored()
                assert writer.everything().startswith(got), "the object is not a prefix of the logs"
        finally:
            writer.stop.set()
    expected = writer.everything()
    assert writer.rotations >= 10 and killed_shipping >= 10

    agent = await AgentProcess.start(config)
    try:
        await agent.event("agent_ready")
        with trio.fail_after(60):
            while (got := await stored()) != expected:
                assert expected.startswith(got)
                await agent.event("append_acked")
    finally:
        await agent.close()
    assert got == expected
