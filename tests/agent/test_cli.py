"""``tailbucket agent`` and ``tailbucket validate``: exit statuses, one-line refusals, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from agent.cli import main
from tests.agent.agent_support import HOST, AgentProcess, append_to, config_document, lines, write_config
from tests.support import REPO, client_env


def good_document(tmp_path: Path, url: str = "http://127.0.0.1:9", bucket: str = "logs") -> dict:
    (tmp_path / "logs").mkdir(exist_ok=True)
    return config_document(tmp_path, url, bucket)


def test_validate_accepts_a_good_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "agent.yaml", good_document(tmp_path))
    assert main(["validate", "--config", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ok (1 input(s): 0; bucket logs)")


def test_validate_accepts_the_commented_example() -> None:
    assert main(["validate", "--config", str(REPO / "config" / "agent.yaml")]) == 0


BAD = [
    ("unknown key", "inputs:\n  - paths: [/l/*.log]\n    exclud: ['*.gz']\nsink: {bucket: logs}\n",
     "inputs[0].exclud: unknown key"),
    ("bad unit", "sink: {bucket: logs}\ninputs: [{paths: [/l/*.log]}]\nbatch: {max_bytes: 1 GiBB}\n",
     'batch.max_bytes: "1 GiBB" is not a size'),
    ("bad duration", "sink: {bucket: logs}\ninputs: [{paths: [/l/*.log]}]\nbatch: {max_wait: soon}\n",
     'batch.max_wait: "soon" is not a duration'),
    ("bad template", "sink: {bucket: logs}\ninputs: [{paths: [/l/*.log], key: '{host}/{nope}'}]\n",
     "inputs[0].key: unknown field {nope}"),
    ("template without the file", "sink: {bucket: logs}\ninputs: [{paths: [/l/*.log], key: '{host}/x'}]\n",
     "inputs[0].key: '{host}/x' needs {path}, {name} or {stem}"),
    ("unset variable", "sink: {bucket: '${TB_TEST_UNSET_BUCKET}'}\ninputs: [{paths: [/l/*.log]}]\n",
     "sink.bucket: environment variable TB_TEST_UNSET_BUCKET is not set"),
    ("missing bucket", "sink: {region: us-east-1}\ninputs: [{paths: [/l/*.log]}]\n", "sink.bucket: is required"),
    ("relative glob", "sink: {bucket: logs}\ninputs: [{paths: [logs/*.log]}]\n", "inputs[0].paths[0]: 'logs/*.log' must be an absolute path"),
    ("half a key pair", "sink: {bucket: logs, access_key_id: AK}\ninputs: [{paths: [/l/*.log]}]\n",
     "sink.secret_access_key: is required when the other half"),
    ("bad choice", "sink: {bucket: logs}\ninputs: [{paths: [/l/*.log], read_from: middle}]\n",
     "inputs[0].read_from: 'middle' is not one of: beginning, end"),
    ("bad listen", "sink: {bucket: logs}\ninputs: [{paths: [/l/*.log]}]\nhttp: {listen: nowhere}\n",
     "http.listen: 'nowhere' is not HOST:PORT"),
    ("no inputs", "sink: {bucket: logs}\ninputs: []\n", "inputs: needs at least one input"),
    ("duplicate key", "sink: {bucket: logs}\nsink: {bucket: other}\ninputs: [{paths: [/l/*.log]}]\n",
     "is not valid YAML: duplicate key 'sink' in \"<unicode string>\", line 2, column 1"),
    ("not YAML", "sink: [unclosed\n", "is not valid YAML: while parsing a flow sequence"),
]


@pytest.mark.parametrize(("case", "text", "says"), BAD, ids=[case for case, _, _ in BAD])
def test_validate_refuses_a_bad_config_naming_where(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     case: str, text: str, says: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    assert main(["validate", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    assert err.startswith(f"tailbucket validate: {path}") and says in err, err


def test_a_missing_config_file_and_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["agent"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --config" in capsys.readouterr().err


def test_check_sink_proves_the_bucket_takes_appends(server, s3, bucket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path / "agent.yaml", good_document(tmp_path, server.url, bucket))
    assert main(["validate", "--config", str(path), "--check-sink"]) == 0
    out = capsys.readouterr().out
    steps = [line.split(None, 1) for line in out.splitlines()[1:-1]]
    assert [status for status, _ in steps] == ["ok"] * 4
    assert [name.split()[0] for _, name in steps] == ["create", "append", "read", "delete"]
    assert steps[0][1].startswith(f"create {bucket}/.tailbucket-probe/{HOST}/")
    assert f"sink ok: {bucket} accepts appends" in out
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # the probe cleaned up after itself


def test_check_sink_says_what_failed(server, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    document = good_document(tmp_path, server.url, "no-such-bucket-here")
    path = write_config(tmp_path / "agent.yaml", document)
    assert main(["validate", "--config", str(path), "--check-sink"]) == 1
    captured = capsys.readouterr()
    assert "FAIL create no-such-bucket-here/.tailbucket-probe/" in captured.out and "NoSuchBucket" in captured.out
    assert captured.err.startswith("sink check failed: create no-such-bucket-here/") and "NoSuchBucket" in captured.err
    document["sink"]["secret_access_key"] = "wrong"
    document["sink"]["bucket"] = "logs"
    write_config(path, document)
    assert main(["validate", "--config", str(path), "--check-sink"]) == 1
    assert "SignatureDoesNotMatch" in capsys.readouterr().out


def test_the_tailbucket_command_dispatches_validate(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("sink: {bucket: logs}\ninputs: [{paths: [/l/*.log], key: '{nope}'}]\n")
    done = subprocess.run([sys.executable, "-m", "server.cli", "validate", "--config", str(path)], cwd=REPO,
                          env=client_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith(f"tailbucket validate: {path}: inputs[0].key: unknown field {{nope}}")


# -- the daemon --------------------------------------------------------------------------------


@pytest.fixture
async def launched() -> list[AgentProcess]:
    running: list[AgentProcess] = []
    yield running
    for agent in running:
        await agent.close()


async def test_sigterm_drains_and_exits_0_with_the_checkpoint_written(server, s3, bucket, tmp_path: Path, launched) -> None:
    document = good_document(tmp_path, server.url, bucket)
    document["log"] = {"format": "json", "level": "debug"}
    log = tmp_path / "logs" / "app.log"
    log.write_bytes(lines("start", 200))
    agent = await AgentProcess.start(write_config(tmp_path / "agent.yaml", document))
    launched.append(agent)
    await agent.event("agent_ready")
    await agent.event("append_acked")  # shipping has begun (on a busy machine it may take a moment)
    for i in range(20):  # a writer keeps writing until the signal
        append_to(log, lines(f"burst{i}", 300))
    agent.proc.send_signal(signal.SIGTERM)
    assert await agent.finish() == 0
    names = [e["event"] for e in agent.events()]
    assert names.index("agent_stopping") < names.index("agent_stopped") and names[-1] == "agent_stopped"
    state = json.loads((tmp_path / "state" / "checkpoint.json").read_text())["streams"][str(log)]
    stored = await trio.to_thread.run_sync(lambda: s3.get_object(Bucket=bucket, Key=f"{HOST}/app.log")["Body"].read())
    assert state["intent"] is None and state["offset"] == state["object_length"] == len(stored)
    assert log.read_bytes().startswith(stored) and len(stored) > 0


async def test_sighup_reloads_inputs(server, s3, bucket, tmp_path: Path, launched) -> None:
    document = good_document(tmp_path, server.url, bucket)
    document["log"] = {"format": "json", "level": "info"}
    config = write_config(tmp_path / "agent.yaml", document)
    (tmp_path / "more").mkdir()
    first, later = tmp_path / "logs" / "first.log", tmp_path / "more" / "later.log"
    first.write_bytes(lines("first", 100))
    later.write_bytes(lines("later", 100))
    agent = await AgentProcess.start(config)
    launched.append(agent)
    await agent.event("agent_ready")
    document["inputs"].append({"paths": [str(tmp_path / "more" / "*.log")], "key": "{host}/more/{name}"})
    write_config(config, document)
    agent.proc.send_signal(signal.SIGHUP)
    await agent.event("config_reloaded", inputs=2)  # streams of the new input are started by then
    started = [e["stream"] for e in agent.events() if e["event"] == "stream_started"]
    assert started.count(str(later)) == 1
    assert started.count(str(first)) == 1  # the unchanged stream kept going untouched
    broken = dict(document, inputs=[{"paths": ["relative/*.log"]}])
    write_config(config, broken)
    agent.proc.send_signal(signal.SIGHUP)
    failed = await agent.event("config_reload_failed")
    assert "inputs[0].paths[0]" in failed["error"]
    agent.proc.send_signal(signal.SIGTERM)
    assert await agent.finish() == 0
    got = await trio.to_thread.run_sync(lambda: s3.get_object(Bucket=bucket, Key=f"{HOST}/more/later.log")["Body"].read())
    assert got == later.read_bytes()


async def test_the_agent_refuses_a_bad_config_and_a_locked_state_dir(server, bucket, tmp_path: Path, launched) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sink: {bucket: logs}\ninputs: [{paths: [/l/*.log]}]\nbatch: {max_wait: -1s}\n")
    refused = await AgentProcess.start(bad)
    launched.append(refused)
    assert await refused.finish() == 1
    assert refused.messages() == [f"tailbucket agent: {bad}: batch.max_wait: \"-1s\" is not a duration (use e.g. 200ms, 5s, 1m30s)"]
    document = good_document(tmp_path, server.url, bucket)
    document["log"] = {"format": "json", "level": "info"}
    config = write_config(tmp_path / "agent.yaml", document)
    first = await AgentProcess.start(config)
    launched.append(first)
    await first.event("agent_ready")
    second = await AgentProcess.start(config)
    launched.append(second)
    assert await second.finish() == 1
    assert second.messages()[-1] == f"tailbucket agent: {tmp_path / 'state'} is in use by another agent"
