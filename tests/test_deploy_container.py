"""The container's contract, without a container engine.

Runs exactly the Containerfile's ENTRYPOINT (parsed here, so the two cannot
drift) as its non-root USER, configured by the environment alone as in
``deploy/kubernetes/sidecar.yaml``, against the real server: it ships the
shared directory's logs, answers ``/health`` and ``/ready``, reports a file
it may not read without dying, and on SIGTERM drains and exits 0 well within
the Pod's grace period, checkpoint written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest
import trio
import yaml

from tests.agent.agent_support import AgentProcess, lines
from tests.support import ACCESS_KEY, REGION, REPO, SECRET_KEY

CONTAINERFILE = REPO / "Containerfile"
POD = REPO / "deploy" / "kubernetes" / "sidecar.yaml"
VENV_BIN = REPO / ".venv" / "bin"
DRAIN_LIMIT = 15.0  # seconds; the Pod grants terminationGracePeriodSeconds (45)


def containerfile_instruction(name: str) -> str:
    matches = re.findall(rf"^{name}\s+(.+)$", CONTAINERFILE.read_text(), re.MULTILINE)
    assert len(matches) == 1, f"{name} in {CONTAINERFILE}: {matches}"
    return matches[0].strip()


def entrypoint() -> list[str]:
    """The exec-form ENTRYPOINT, its program resolved where ``pip install .`` put it (the venv's bin)."""
    command = json.loads(containerfile_instruction("ENTRYPOINT"))
    assert command == ["tailbucket", "agent"]  # no --config: the environment is the config
    return [str(VENV_BIN / command[0]), *command[1:]]


def container_user() -> tuple[int, int]:
    uid, gid = containerfile_instruction("USER").split(":")
    return int(uid), int(gid)


def pod_sidecar() -> tuple[dict, dict]:
    pod = next(d for d in yaml.safe_load_all(POD.read_text()) if d and d["kind"] == "Pod")
    return pod, next(c for c in pod["spec"]["containers"] if c["name"] == "tailbucket")


@pytest.fixture
def shared(tmp_path: Path):
    """A directory tree the container user can reach (pytest's tmp dirs are private to root)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run as the container's user")
    root = Path(tempfile.mkdtemp(prefix="tb-container-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root)


async def test_the_entrypoint_ships_as_the_container_user_and_drains_on_sigterm(server, s3, bucket, shared: Path) -> None:
    uid, gid = container_user()
    pod, sidecar = pod_sidecar()
    assert sidecar["securityContext"]["runAsUser"] == uid and pod["spec"]["securityContext"]["fsGroup"] == gid
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert DRAIN_LIMIT < grace

    logs, state = shared / "logs", shared / "state"
    (logs / "nested").mkdir(parents=True)
    state.mkdir()
    os.chown(state, uid, gid)  # the state volume belongs to the container user
    os.chown(logs, 0, gid)  # as with fsGroup: the app writes, the sidecar's group reads
    os.chown(logs / "nested", 0, gid)
    logs.chmod(0o2750)
    (logs / "nested").chmod(0o2750)
    app, worker, secret = logs / "app.log", logs / "nested" / "worker.log", logs / "secret.log"
    for path, data in ((app, lines("app", 2000)), (worker, lines("worker", 500)), (secret, b"private\n")):
        path.write_bytes(data)
        os.chown(path, 0, gid)
        path.chmod(0o640)
    os.chown(secret, 0, 0)
    secret.chmod(0o600)  # not for the sidecar: reported, and the rest still ships

    env = {  # what the Pod gives the container (deploy/kubernetes/sidecar.yaml), pointed at the test server
        "PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(state), "PYTHONUNBUFFERED": "1",
        "TAILBUCKET_PATHS": f"{logs}/**/*.log", "TAILBUCKET_BUCKET": bucket, "TAILBUCKET_KEY": "{host}/{name}",
        "TAILBUCKET_STATE_DIR": str(state), "TAILBUCKET_HTTP_LISTEN": "127.0.0.1:0", "TAILBUCKET_HOST": "web",
        "TAILBUCKET_LOG_LEVEL": "debug", "AWS_ENDPOINT_URL": server.url, "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_EC2_METADATA_DISABLED": "true",
    }
    assert {e["name"] for e in sidecar["env"]} >= {"TAILBUCKET_PATHS", "TAILBUCKET_BUCKET", "TAILBUCKET_KEY",
                                                    "TAILBUCKET_STATE_DIR", "TAILBUCKET_HTTP_LISTEN", "TAILBUCKET_HOST"}
    command = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *entrypoint()]
    proc = await trio.lowlevel.open_process(command, cwd=state, env=env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    agent = AgentProcess(proc)
    try:
        listening = await agent.event("status_listening")
        status_url = f"http://{listening['address']}"
        expected = {"web/app.log": app.stat().st_size, "web/worker.log": worker.stat().st_size}
        done: dict[str, int] = {}
        while done != expected:
            acked = await agent.event("append_acked")
            done[acked["key"]] = acked["object_length"]
        async with httpx.AsyncClient(base_url=status_url) as http:
            assert (await http.get("/health")).status_code == 200
            ready = await http.get("/ready")
            assert ready.status_code == 200, ready.text
        assert agent.proc.returncode is None  # the unreadable file did not stop the agent

        started = trio.current_time()
        agent.proc.send_signal(signal.SIGTERM)
        assert await agent.finish(timeout=DRAIN_LIMIT) == 0
        assert trio.current_time() - started < DRAIN_LIMIT
    finally:
        await agent.close()

    for key, path in (("web/app.log", app), ("web/worker.log", worker)):
        stored = await trio.to_thread.run_sync(lambda k=key: s3.get_object(Bucket=bucket, Key=k)["Body"].read())
        assert stored == path.read_bytes()
    checkpoint = state / "checkpoint.json"
    assert checkpoint.stat().st_uid == uid
    streams = json.loads(checkpoint.read_text())["streams"]
    assert streams[str(app)]["offset"] == app.stat().st_size and streams[str(app)]["intent"] is None
    assert str(secret) not in streams or streams[str(secret)]["offset"] == 0
    assert [e["event"] for e in agent.events()][-1] == "agent_stopped"
    reported = [e for e in agent.events() if str(secret) in json.dumps(e) and e.get("level") in ("warning", "error")]
    assert reported and reported[0]["event"] == "file_unreadable" and reported[0]["error"] == "Permission denied"
