"""The agent end to end, in process: real files, the real server on loopback, objects compared byte for byte."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from agent.checkpoint import load_states
from sink.sigv4 import SigV4Auth
from tests.agent.agent_support import HOST, AgentRun, agent_config, append_to, lines
from tests.support import ACCESS_KEY, REGION, SECRET_KEY


@pytest.fixture(autouse=True)
def logs(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir()
    return tmp_path / "logs"


async def get_object(s3, bucket: str, key: str) -> bytes:  # type: ignore[no-untyped-def]
    return await trio.to_thread.run_sync(lambda: s3.get_object(Bucket=bucket, Key=f"{HOST}/{key}")["Body"].read())


async def test_existing_and_new_files_are_copied_exactly(server, s3, bucket, tmp_path: Path, nursery) -> None:
    config = agent_config(tmp_path, server.url, bucket)
    old = tmp_path / "logs" / "old.log"
    old.write_bytes(lines("old", 2000))
    run = await AgentRun.start(nursery, config)
    await run.shipped(old)
    new = tmp_path / "logs" / "new.log"
    created = time.monotonic()
    new.write_bytes(lines("new", 10))
    await run.wait(lambda: run.shipper.lane(str(new)) is not None, timeout=1.0)  # inotify: picked up within 1 s
    assert time.monotonic() - created < 1.0
    append_to(old, lines("old-more", 500))
    append_to(new, lines("new-more", 500))
    await run.shipped(old, new)
    await run.stop()
    assert await get_object(s3, bucket, "old.log") == old.read_bytes()
    assert await get_object(s3, bucket, "new.log") == new.read_bytes()
    states = load_states(tmp_path / "state")  # drained: the checkpoint says everything is in
    assert states[str(old)].offset == old.stat().st_size and states[str(old)].intent is None


async def test_rename_rotation_keeps_order_in_one_object(server, s3, bucket, tmp_path: Path, nursery) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("first", 1000))
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket))
    await run.shipped(log)
    expected = log.read_bytes()
    log.rename(tmp_path / "logs" / "app.log.1")  # the glob does not match the rotated name
    append_to(tmp_path / "logs" / "app.log.1", b"a late line, written after the rename\n")
    log.write_bytes(lines("second", 700))
    expected += b"a late line, written after the rename\n" + log.read_bytes()
    await run.shipped(log)
    await run.stop()
    assert await get_object(s3, bucket, "app.log") == expected


async def test_copytruncate_continues_from_zero(server, s3, bucket, tmp_path: Path, nursery) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("before", 800))
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket))
    await run.shipped(log)
    expected = log.read_bytes()
    with open(log, "r+b") as f:
        f.truncate(0)
    append_to(log, lines("after", 30))
    expected += log.read_bytes()
    await run.shipped(log)
    await run.stop()
    assert await get_object(s3, bucket, "app.log") == expected


async def test_a_file_deleted_while_open_is_read_to_its_end(server, s3, bucket, tmp_path: Path, nursery) -> None:
    log = tmp_path / "logs" / "app.log"
    writer = open(log, "ab")
    writer.write(lines("alive", 500))
    writer.flush()
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket))
    await run.shipped(log)
    log.unlink()
    writer.write(lines("deleted-but-open", 300))
    writer.close()
    total = len(lines("alive", 500) + lines("deleted-but-open", 300))
    lane = run.shipper.lane(str(log))
    await run.wait(lambda: lane.state.offset == total and lane.idle and str(log) not in run.agent.streams.tailers)
    await run.stop()
    assert await get_object(s3, bucket, "app.log") == lines("alive", 500) + lines("deleted-but-open", 300)


async def test_inode_reuse_is_a_new_file_while_running_and_across_a_restart(server, s3, bucket, tmp_path: Path, nursery) -> None:
    config = agent_config(tmp_path, server.url, bucket)
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("one", 300))
    run = await AgentRun.start(nursery, config)
    await run.shipped(log)
    expected = log.read_bytes()
    inode = log.stat().st_ino
    log.unlink()
    log.write_bytes(lines("two", 40))  # ext4 and friends hand the freed inode out again
    expected += log.read_bytes()
    await run.shipped(log)
    await run.stop()
    log.unlink()
    log.write_bytes(lines("three-longer-than-before", 900))  # while stopped; same name, maybe same inode
    expected += log.read_bytes()
    run = await AgentRun.start(nursery, config)
    await run.shipped(log)
    await run.stop()
    assert await get_object(s3, bucket, "app.log") == expected
    print("inode reused:", log.stat().st_ino == inode)


async def test_a_partial_last_line_waits_for_its_newline_or_the_timeout(server, s3, bucket, tmp_path: Path, nursery) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(b"complete\n")
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket, partial_line_timeout="1s"))
    await run.shipped(log)
    lane = run.shipper.lane(str(log))
    written = time.monotonic()
    append_to(log, b"half a li")
    await run.wait(lambda: lane.state.offset == len(b"complete\nhalf a li") and lane.idle)
    assert time.monotonic() - written >= 0.9  # held for partial_line_timeout, then sent as it is
    append_to(log, b"ne, then the rest\nand a whole line\n")
    await run.shipped(log)
    await run.stop()
    assert await get_object(s3, bucket, "app.log") == b"complete\nhalf a line, then the rest\nand a whole line\n"


async def test_read_from_end_skips_what_was_there_and_remembers_it(server, s3, bucket, tmp_path: Path, nursery) -> None:
    config = agent_config(tmp_path, server.url, bucket,
                          inputs=[{"paths": [str(tmp_path / "logs" / "*.log")], "key": "{host}/{name}", "read_from": "end"}])
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("history", 100))
    run = await AgentRun.start(nursery, config)
    append_to(log, lines("live", 10))
    await run.shipped(log)
    await run.stop()
    append_to(log, lines("while-stopped", 10))
    run = await AgentRun.start(nursery, config)  # the checkpoint wins over read_from now
    await run.shipped(log)
    await run.stop()
    assert await get_object(s3, bucket, "app.log") == lines("live", 10) + lines("while-stopped", 10)


async def test_poll_mode_finds_new_files_within_the_interval(server, s3, bucket, tmp_path: Path, nursery) -> None:
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket, watch="poll", poll_interval="300ms"))
    log = tmp_path / "logs" / "polled.log"
    log.write_bytes(lines("p", 50))
    await run.wait(lambda: run.shipper.lane(str(log)) is not None, timeout=1.0)
    append_to(log, lines("q", 50))
    await run.shipped(log)
    await run.stop()
    assert await get_object(s3, bucket, "polled.log") == log.read_bytes()


async def test_a_thousand_files(server, s3, bucket, tmp_path: Path, nursery) -> None:
    logs = tmp_path / "logs"
    paths = [logs / f"f{i:04d}.log" for i in range(1000)]
    for i, path in enumerate(paths):
        path.write_bytes(lines(f"file{i}", 1 + i % 5))
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket))
    assert len(run.agent.streams.tailers) == 1000
    await run.shipped(*paths, timeout=60)
    for path in paths[::7]:
        append_to(path, b"one more line\n")
    await run.shipped(*paths[::7])
    await run.stop()
    auth = SigV4Auth(ACCESS_KEY, SECRET_KEY, REGION)
    wrong: list[Path] = []

    async def compare(some: list[Path]) -> None:
        for path in some:
            response = await http.get(f"/{bucket}/{HOST}/{path.name}", auth=auth)
            if response.content != path.read_bytes():
                wrong.append(path)

    async with httpx.AsyncClient(base_url=server.url) as http, trio.open_nursery() as readers:
        for k in range(8):
            readers.start_soon(compare, paths[k::8])
    assert not wrong


async def test_metrics_and_readiness(server, bucket, tmp_path: Path, nursery) -> None:
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("m", 400))
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket))
    await run.shipped(log)
    async with httpx.AsyncClient(base_url=run.status_url) as http:
        assert (await http.get("/health")).status_code == 200
        ready = await http.get("/ready")
        assert ready.status_code == 200, ready.text
        text = (await http.get("/metrics")).text
        assert (await http.get("/nope")).status_code == 404
        assert (await http.post("/ready")).status_code == 405
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    size = log.stat().st_size
    assert samples[("tailbucket_agent_shipped_bytes_total", ())] == size
    assert samples[("tailbucket_agent_read_bytes_total", ())] == size
    assert samples[("tailbucket_agent_appends_total", ())] >= 1
    assert samples[("tailbucket_agent_files_watched", ())] == 1
    assert samples[("tailbucket_agent_conflicts_total", ())] == 0
    assert samples[("tailbucket_agent_sink_ready", ())] == 1
    assert samples[("tailbucket_agent_stream_lag_bytes", (("stream", str(log)),))] == 0
    assert samples[("tailbucket_agent_line_to_visible_seconds_count", ())] >= 1
    await run.stop()


async def test_a_foreign_writer_stops_its_stream_and_not_the_others(server, s3, bucket, tmp_path: Path, nursery) -> None:
    a, b = tmp_path / "logs" / "a.log", tmp_path / "logs" / "b.log"
    a.write_bytes(b"ours\n")
    b.write_bytes(b"b's\n")
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket))
    await run.shipped(a, b)
    await trio.to_thread.run_sync(lambda: s3.put_object(Bucket=bucket, Key=f"{HOST}/a.log", Body=b"FOREIGN\n", WriteOffsetBytes=5))
    append_to(a, b"more\n")
    append_to(b, b"more of b\n")
    lane = run.shipper.lane(str(a))
    await run.wait(lambda: lane.failed is not None)
    await run.shipped(b)
    assert str(a) not in run.agent.streams.tailers and run.agent.metrics.conflicts._value.get() == 1
    await run.stop()
    assert await get_object(s3, bucket, "a.log") == b"ours\nFOREIGN\n"  # nothing overwritten, nothing skipped over
    assert await get_object(s3, bucket, "b.log") == b"b's\nmore of b\n"


async def test_reload_starts_new_inputs_stops_removed_ones_and_leaves_the_rest(server, s3, bucket, tmp_path: Path, nursery) -> None:
    (tmp_path / "other").mkdir()
    keep, drop, added = tmp_path / "logs" / "keep.log", tmp_path / "logs" / "drop.txt", tmp_path / "other" / "new.log"
    keep.write_bytes(lines("keep", 100))
    drop.write_bytes(lines("drop", 100))
    added.write_bytes(lines("added", 100))
    inputs = [{"name": "keep", "paths": [str(tmp_path / "logs" / "*.log")], "key": "{host}/{name}"},
              {"name": "drop", "paths": [str(tmp_path / "logs" / "*.txt")], "key": "{host}/{name}"}]
    run = await AgentRun.start(nursery, agent_config(tmp_path, server.url, bucket, inputs=inputs))
    await run.shipped(keep, drop)
    kept_tailer = run.agent.streams.tailers[str(keep)]
    inputs = [inputs[0], {"name": "added", "paths": [str(tmp_path / "other" / "*.log")], "key": "{host}/{name}",
                          "read_from": "end"}]
    assert await run.agent.reload(agent_config(tmp_path, server.url, bucket, inputs=inputs))
    assert run.agent.streams.tailers[str(keep)] is kept_tailer  # untouched
    assert str(drop) not in run.agent.streams.tailers
    append_to(keep, lines("keep-after", 10))
    append_to(drop, lines("drop-after", 10))
    append_to(added, lines("added-after", 10))
    await run.shipped(keep, added)
    await run.stop()
    assert await get_object(s3, bucket, "keep.log") == keep.read_bytes()
    assert await get_object(s3, bucket, "drop.txt") == lines("drop", 100)
    assert await get_object(s3, bucket, "new.log") == lines("added-after", 10)  # read_from: end for a new input


async def test_server_killed_and_restarted_mid_stream(make_server, tmp_path: Path, nursery) -> None:
    private = make_server()
    s3 = boto3_client(private.url)
    await trio.to_thread.run_sync(lambda: s3.create_bucket(Bucket="restarts"))
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("before", 3000))
    run = await AgentRun.start(nursery, agent_config(tmp_path, private.url, "restarts"))
    await run.shipped(log)

    async def write_steadily(count: int) -> None:
        for i in range(count):
            append_to(log, lines(f"steady{i}", 50))
            await trio.sleep(0.005)  # a writer's pace, not a wait for anything

    async with trio.open_nursery() as writers:
        writers.start_soon(write_steadily, 100)
        await trio.to_thread.run_sync(private.kill)
        await trio.to_thread.run_sync(private.restart)
    await run.shipped(log)
    await run.stop()
    assert await trio.to_thread.run_sync(lambda: s3.get_object(Bucket="restarts", Key=f"{HOST}/app.log")["Body"].read()) == log.read_bytes()


@pytest.mark.slow
async def test_server_down_ten_seconds_reading_pauses_then_catches_up(make_server, tmp_path: Path, nursery) -> None:
    private = make_server()
    s3 = boto3_client(private.url)
    await trio.to_thread.run_sync(lambda: s3.create_bucket(Bucket="outage"))
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("before", 100))
    budget = 256 * 1024
    run = await AgentRun.start(nursery, agent_config(tmp_path, private.url, "outage", max_read_ahead=budget,
                                                     batch={"max_bytes": "64KiB"}))
    await run.shipped(log)
    agent = run.agent
    await trio.to_thread.run_sync(private.kill)
    down_at = trio.current_time()
    async with httpx.AsyncClient(base_url=run.status_url) as status:
        with trio.fail_after(10):
            while agent.health.ready:  # the next append finds no server
                append_to(log, lines("probe", 5))
                await agent.health.wait_changed()
        assert (await status.get("/ready")).status_code == 503
        while trio.current_time() - down_at < 10:  # a writer goes on for the whole outage
            append_to(log, lines("down", 1000))
            await trio.sleep(0.1)
            read = agent.metrics.read_bytes._value.get() - agent.metrics.shipped_bytes._value.get()
            assert read <= budget  # reading paused: the file is the buffer, memory stays flat
        assert log.stat().st_size - run.shipper.lane(str(log)).state.offset > 4 * budget
        assert (await status.get("/ready")).status_code == 503
        await trio.to_thread.run_sync(private.restart)
        await run.shipped(log)
        assert (await status.get("/ready")).status_code == 200
    await run.stop()
    assert await trio.to_thread.run_sync(lambda: s3.get_object(Bucket="outage", Key=f"{HOST}/app.log")["Body"].read()) == log.read_bytes()
    assert agent.metrics.retries._value.get() >= 1


def boto3_client(url: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        region_name=REGION)

