"""``make run``: the whole product on one machine, stopped cleanly by Ctrl-C.

Starts the embedded server (data in ``./data``), creates the ``logs`` bucket,
starts the log generator (``demo.generator``) and an agent with
``config/demo.yaml``, then prints how to watch ``s3://logs/demo/app.log``
grow.  The children run in their own process groups, so Ctrl-C reaches only
this runner, which stops them in the order that loses nothing: the generator
first, then it waits (bounded) until the object holds every byte written,
then the agent drains and writes its checkpoint, then the server stops.
Their JSON logs go to ``data/demo/*.log``; exit 0 when every child exited 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from sink.sigv4 import SigV4Auth

REPO = Path(__file__).resolve().parents[1]
BUCKET, KEY = "logs", "demo/app.log"
DEMO_KEYS = ("TBDEMOACCESSKEY", "tbdemo-secret-key")  # the demo's root keys; a real server keeps its own
START_TIMEOUT = 30.0
CATCH_UP_TIMEOUT = 15.0  # seconds to wait for the object to hold the whole log before stopping the agent
STOP_TIMEOUT = 30.0


@dataclass
class Child:
    """One child process; its output lines go to ``log`` and are offered to ``watch``."""

    name: str
    proc: subprocess.Popen[bytes]
    log: IO[str]
    echo: bool = False
    found: dict[str, dict] = field(default_factory=dict)  # event name -> first such JSON event
    _seen: threading.Condition = field(default_factory=threading.Condition)

    def start_reader(self) -> None:
        threading.Thread(target=self._read, daemon=True, name=f"{self.name}-output").start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            self.log.write(text + "\n")
            self.log.flush()
            if self.echo:
                print(f"  {self.name}: {text}", flush=True)
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                with self._seen:
                    self.found.setdefault(event["event"], event)
                    self._seen.notify_all()
        with self._seen:
            self.found.setdefault("exited", {})
            self._seen.notify_all()

    def wait_event(self, name: str, timeout: float) -> dict:
        """The first ``name`` event, waiting on the output itself (never a fixed sleep)."""
        with self._seen:
            if not self._seen.wait_for(lambda: name in self.found or "exited" in self.found, timeout):
                raise RuntimeError(f"{self.name} did not log {name} within {timeout:.0f} s")
            if name not in self.found:
                raise RuntimeError(f"{self.name} exited ({self.proc.wait()}) before {name}; see {self.log.name}")
            return self.found[name]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"demo: {self.name} did not stop within {STOP_TIMEOUT:.0f} s: killed", flush=True)
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn(name: str, args: list[str], env: dict[str, str], logs: Path, *, echo: bool = False) -> Child:
    log = open(logs / f"{name}.log", "a", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    child = Child(name, proc, log, echo)
    child.start_reader()
    return child


def s3_request(method: str, endpoint: str, path: str) -> httpx.Response:
    auth = SigV4Auth(DEMO_KEYS[0], DEMO_KEYS[1], "us-east-1")
    return httpx.request(method, f"{endpoint}/{path}", auth=auth, timeout=10.0)


def object_length(endpoint: str) -> int:
    response = s3_request("HEAD", endpoint, f"{BUCKET}/{KEY}")
    return int(response.headers["content-length"]) if response.status_code == 200 else 0


def log_bytes(logs: Path) -> int:
    return sum(p.stat().st_size for p in logs.glob("app.log*"))


def watch_commands(endpoint: str, status: str, rotate_bytes: str) -> str:
    keys = f"AWS_ACCESS_KEY_ID={DEMO_KEYS[0]} AWS_SECRET_ACCESS_KEY={DEMO_KEYS[1]} AWS_REGION=us-east-1"
    head = f"aws --endpoint-url {endpoint} s3api head-object --bucket {BUCKET} --key {KEY} --query ContentLength"
    return (
        f"\ntailbucket demo: a log is written to data/demo/logs/app.log (rotated every {rotate_bytes} bytes)\n"
        f"and shipped into s3://{BUCKET}/{KEY} on {endpoint}.  Watch it grow, in another terminal:\n\n"
        f"  export {keys}\n"
        f"  {head}\n"
        f"  aws --endpoint-url {endpoint} s3 cp s3://{BUCKET}/{KEY} - | tail -3\n"
        f"  N=$({head}); sleep 2   # then only the bytes that came after N:\n"
        f"  curl -s --aws-sigv4 aws:amz:us-east-1:s3 --user \"$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY\" \\\n"
        f"       -H \"Range: bytes=$N-\" {endpoint}/{BUCKET}/{KEY}\n"
        f"  curl -s {status}/metrics | grep tailbucket_agent_stream_lag_bytes\n\n"
        f"Logs: data/demo/server.log, data/demo/agent.log.  Ctrl-C stops everything cleanly.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demo", description="The tailbucket demo (make run).")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the server's data (default ./data)")
    parser.add_argument("--listen", default="127.0.0.1:9000", help="the server's address (default 127.0.0.1:9000)")
    parser.add_argument("--status", default="127.0.0.1:9101", help="the agent's /health /ready /metrics address")
    parser.add_argument("--rate", default="20", help="log lines per second (default 20)")
    parser.add_argument("--rotate-bytes", default=str(64 * 1024), help="rotate app.log at this size")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    data = args.data_dir.resolve()
    demo_dir = data / "demo"
    logs = demo_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    children: list[Child] = []
    failed = False
    try:
        server = spawn("server", ["-m", "server.cli", "server", "--data-dir", str(data), "--listen", args.listen],
                       {**env, "TAILBUCKET_ACCESS_KEY": DEMO_KEYS[0], "TAILBUCKET_SECRET_KEY": DEMO_KEYS[1]}, demo_dir)
        children.append(server)
        endpoint = "http://" + server.wait_event("listening", START_TIMEOUT)["address"]
        created = s3_request("PUT", endpoint, BUCKET)
        if created.status_code not in (200, 409):
            raise RuntimeError(f"cannot create bucket {BUCKET}: {created.status_code} {created.text[:200]}")
        agent_env = {**env, "TAILBUCKET_DEMO_DIR": str(demo_dir), "TAILBUCKET_ENDPOINT": endpoint,
                     "TAILBUCKET_DEMO_STATUS": args.status, "AWS_ACCESS_KEY_ID": DEMO_KEYS[0],
                     "AWS_SECRET_ACCESS_KEY": DEMO_KEYS[1]}
        agent = spawn("agent", ["-m", "server.cli", "agent", "--config", str(REPO / "config" / "demo.yaml")],
                      agent_env, demo_dir)
        children.append(agent)
        status = "http://" + agent.wait_event("status_listening", START_TIMEOUT)["address"]
        agent.wait_event("agent_ready", START_TIMEOUT)
        # Only now: a rotation before the agent watches would leave app.log.1 out of the object.
        generator = spawn("generator", ["-m", "demo.generator", str(logs / "app.log"), "--rate", args.rate,
                                        "--rotate-bytes", args.rotate_bytes], env, demo_dir, echo=True)
        children.append(generator)
        print(watch_commands(endpoint, status, args.rotate_bytes), flush=True)
        print("demo: pids " + " ".join(f"{c.name}={c.proc.pid}" for c in children), flush=True)
        while not stop.wait(0.5):  # the product's own loop: notice a child that died
            dead = [c for c in children if c.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited ({dead[0].proc.returncode}); see {dead[0].log.name}")
        print("\ndemo: stopping: the generator, then the agent (drains), then the server", flush=True)
        failed |= generator.stop() != 0
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        while (length := object_length(endpoint)) < log_bytes(logs) and time.monotonic() < deadline:
            time.sleep(0.1)  # the agent ships what the generator wrote last
        print(f"demo: s3://{BUCKET}/{KEY} holds {length} bytes; the logs hold {log_bytes(logs)}", flush=True)
        failed |= agent.stop() != 0
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr, flush=True)
        failed = True
    finally:
        for child in reversed(children):
            failed |= child.stop() != 0
            child.log.close()
    print("demo: stopped" + (" (with errors)" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
