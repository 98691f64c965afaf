"""Tailers are poked in rounds (no inotify event per write): growth is found by stat, promptly and at low cost."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from tests.agent.agent_support import AgentRun, agent_config, append_to, lines


async def test_a_line_after_a_quiet_spell_ships_within_a_second(server, bucket, tmp_path: Path, nursery) -> None:
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "quiet.log"
    log.write_bytes(lines("start", 10))
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket))
    await run.shipped(log)
    await trio.sleep(1.5)  # the scenario: a quiet spell, long enough for the rounds to back off fully
    written = time.monotonic()
    append_to(log, b"one line after the quiet spell\n")
    await run.shipped(log, timeout=1.0)
    assert time.monotonic() - written < 1.0
    await run.stop()


async def test_busy_files_are_followed_without_write_events(server, bucket, tmp_path: Path, nursery) -> None:
    (tmp_path / "logs").mkdir()
    paths = [tmp_path / "logs" / f"busy{i}.log" for i in range(20)]
    for path in paths:
        path.write_bytes(b"")
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket))
    for round_ in range(5):
        for path in paths:
            append_to(path, lines(f"{path.name}-{round_}", 20))
        await run.shipped(*paths)
    await run.stop()
