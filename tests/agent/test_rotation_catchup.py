"""A writer that rotates every few seconds: the agent follows each new file without waiting out the grace.

The grace (``partial_line_timeout``, 5 s by default) is for a writer that has
not reopened yet.  Once the new file at the path has data, the writer has
moved on: the old file is finished as soon as it has been read to its end (a
partial last line after a brief quiet, still whole).  Before that fix, every
rotation cost the full 5 s, and a writer rotating faster fell further behind.
"""

from __future__ import annotations

from pathlib import Path

import trio

from tests.agent.agent_support import HOST, AgentRun, agent_config, append_to, lines

ROTATIONS = 5
PER_ROTATION = 3.0  # seconds the agent may take to reach each new file; the old behaviour needed > 5


async def test_a_fast_rotating_writer_is_followed_file_after_file(server, s3, bucket, tmp_path: Path, nursery) -> None:
    config = agent_config(tmp_path, server.url, bucket, partial_line_timeout="5s")
    assert config.partial_line_timeout == 5.0  # the default: what a rotation used to wait
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("file0", 300))
    run = await AgentRun.start(nursery, config)
    await run.shipped(log)
    expected = b""
    for n in range(1, ROTATIONS + 1):
        append_to(log, lines(f"file{n - 1}-more", 50))
        if n == 3:
            append_to(log, b"a last line the writer never finished")  # goes out whole, before the next file
        expected += log.read_bytes()
        log.rename(tmp_path / "logs" / f"app.log.{n}")  # the glob does not match the rotated name
        log.write_bytes(lines(f"file{n}", 200))
        started = trio.current_time()
        await run.shipped(log, timeout=PER_ROTATION)  # the new file, every byte of it, acknowledged
        assert trio.current_time() - started < PER_ROTATION
    expected += log.read_bytes()
    await run.stop()
    body = await trio.to_thread.run_sync(lambda: s3.get_object(Bucket=bucket, Key=f"{HOST}/app.log")["Body"].read())
    assert body == expected
