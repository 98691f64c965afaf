"""The kill -9 soak: the agent killed at random moments while a writer appends and rotates.

A ``RotatingWriter`` appends to two logs and rotates them logrotate-style
(rename + create, a late line into the renamed file, some lines written in two
pieces) and never deletes, so every byte ever written is still on disk.  The
writer starts once an agent has recorded both streams (a generation rotated
away before the agent ever saw its log is, by design, not shipped).  Then the
agent is killed with SIGKILL at a random moment after its first log line
(from "loading the checkpoint" to "busy shipping"; a kill while Python is
still importing proves nothing, and on a loaded machine imports take
seconds), and started again, ``kills`` times, while the writer goes on.
Then the writer stops, one last agent catches up and drains (SIGTERM), and
each object must equal its log's generations concatenated, oldest first: no
byte lost, none twice, none out of order.

Rotation waits for the old file to be quiet for ``partial_line_timeout``
(the tailer's rotation grace); the soak sets it to 500 ms so that the catch-up
after many rotations fits in the time budget (the default 5 s would cost 5 s
per rotated generation not yet shipped).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.agentproc import BUCKET, HOST, AgentProcess, agent_config, wait_until
from bench.logwriter import MiB, RotatingWriter
from bench.raws3 import RawS3
from bench.verify import sizes_reached, verify
from tests.support import ServerProcess

Row = tuple[str, str, str, str]
LOGS = ("app.log", "web.log")


def soak(tmp: Path, kills: int, rate: float, rotate_bytes: int, max_delay: float, seed: int | None = None) -> list[Row]:
    """``kills`` SIGKILLs, each [0, max_delay] s after the agent's first event; the objects must equal the logs."""
    rng = random.Random(seed)
    workdir = tmp / "soak"
    workdir.mkdir()
    server = ServerProcess(tmp / "soak-data").start()
    agent: AgentProcess | None = None
    stats = {"ready": 0, "landed": 0, "not_landed": 0, "errors": 0}
    journal: list[dict[str, Any]] = []  # every run's events, for a post-mortem
    try:
        with RawS3(server.port) as s3:
            s3.create_bucket(BUCKET)
        config = agent_config(workdir, server.url, BUCKET, partial_line_timeout="500ms")
        writer = RotatingWriter([workdir / "logs" / name for name in LOGS], rate, rotate_bytes)  # files, no lines
        agent = AgentProcess(config).start().wait_ready()  # both streams are in the checkpoint
        writer.start()
        started = time.monotonic()
        try:
            for kill in range(kills):
                if kill:
                    agent = AgentProcess(config).start()
                if not agent.wait_event("agent_starting", 60):
                    raise RuntimeError(f"the agent did not start: {agent.tail()}")
                time.sleep(rng.uniform(0.0, max_delay))  # a random moment: the point of the soak
                agent.kill()
                _tally(agent, stats, journal)
        finally:
            writer.stop()
        soaked = time.monotonic() - started
        final_start = time.monotonic()
        agent = AgentProcess(config).start().wait_ready()
        expected = {f"{HOST}/{path.name}": writer.generations(i) for i, path in enumerate(writer.paths)}
        sizes = {key: sum(p.stat().st_size for p in paths) for key, paths in expected.items()}
        with RawS3(server.port) as s3:
            try:
                caught_up = wait_until(lambda: sizes_reached(s3, BUCKET, f"{HOST}/", sizes), 180, "soak caught up",
                                       every=0.1)
                if agent.stop() != 0:
                    raise RuntimeError(f"the last agent did not drain: {agent.tail()}")
                _tally(agent, stats, journal)
                total = verify(s3, BUCKET, expected)
            except (TimeoutError, RuntimeError, AssertionError) as exc:
                _tally(agent, stats, journal)
                raise AssertionError(f"{exc}; {post_mortem(s3, expected, journal)}") from exc
        catch_up = caught_up - final_start
    finally:
        if agent is not None:
            agent.kill()
        server.stop()
    return [(f"kill -9 soak: {kills} kills at random moments over {soaked:.0f} s",
             f"{total / MiB:.1f} MiB in {len(LOGS)} objects == logs",
             f"{writer.rotations} rotations; {stats['ready']} kills after ready; intents settled at restart: "
             f"{stats['landed']} landed, {stats['not_landed']} not; {stats['errors']} error events; "
             f"last start caught up in {catch_up:.1f} s",
             "target >= 50 kills, exact")]


def post_mortem(s3: RawS3, expected: dict[str, list[Path]], journal: list[dict[str, Any]]) -> str:
    """Where each object departs from its log (file and offset), and where the runs' events were saved."""
    notes = []
    for key, paths in expected.items():
        got = s3.get(BUCKET, key) or b""
        at = 0
        for path in paths:
            data = path.read_bytes()
            part = got[at : at + len(data)]
            if part != data:
                where = next((i for i, (a, b) in enumerate(zip(part, data)) if a != b), min(len(part), len(data)))
                notes.append(f"{key}: object has {len(got)} bytes; departs in {path.name} at offset {where} "
                             f"(object offset {at + where}) of {len(data)}")
                break
            at += len(data)
        else:
            notes.append(f"{key}: equal to its logs" if at == len(got) else f"{key}: {len(got) - at} bytes too many")
    out = Path(tempfile.gettempdir()) / f"agent-soak-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.write_text("".join(json.dumps(event) + "\n" for event in journal))
    return "; ".join(notes) + f"; every run's events in {out}"


def _tally(agent: AgentProcess, stats: dict[str, int], journal: list[dict[str, Any]]) -> None:
    journal.append({"event": "bench_run", "pid": agent.pid})
    journal.extend(agent.events)
    stats["ready"] += agent.count("agent_ready")
    for event in agent.events:
        if event.get("event") == "intent_resolved":
            stats["landed" if event.get("verdict") == "landed" else "not_landed"] += 1
    stats["errors"] += len(agent.errors())
