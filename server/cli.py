"""``tailbucket``: the command-line entry point.

``tailbucket server`` runs the embedded S3 server.  Other subcommands
(``agent``, ``validate``) live in their own packages and are looked up by
module name, so the server does not import the agent.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
import trio

from sink.heap import keep_large_buffers_in_heap
from sink.logs import configure_logging
from sink.systemd import Notifier

if TYPE_CHECKING:
    from server.config import Credentials, ServerConfig
    from server.policy import Keyring

CREDENTIALS_FILE = "credentials.json"
# Subcommands served by other packages: name -> module with main(argv) -> int.  They are dispatched
# before anything of the server is imported (the server's modules are imported where they are used):
# ``tailbucket agent`` would otherwise carry them, about 7 MiB of RSS, for its whole life.
OTHER_COMMANDS = {"agent": "agent.cli", "validate": "agent.cli"}

log = structlog.get_logger("tailbucket.server")


def build_keyring(config: ServerConfig, root: Credentials) -> Keyring:
    """The root key pair (admin on everything) and the config's ``keys``."""
    from server.config import ConfigError
    from server.policy import ROOT_GRANTS, AccessKey, Keyring

    for i, key in enumerate(config.keys):
        if key.access_key == root.access_key:
            raise ConfigError(f"keys[{i}].access_key: {key.access_key!r} is the root access key")
    return Keyring([AccessKey(root.access_key, root.secret_key, ROOT_GRANTS), *config.keys])


def resolve_credentials(config: ServerConfig, env: dict[str, str]) -> tuple[Credentials, str]:
    """Root keys from the environment, else the config, else generated once and kept in the data dir."""
    from server.config import Credentials

    if env.get("TAILBUCKET_ACCESS_KEY") and env.get("TAILBUCKET_SECRET_KEY"):
        return Credentials(env["TAILBUCKET_ACCESS_KEY"], env["TAILBUCKET_SECRET_KEY"]), "environment"
    if config.credentials is not None:
        return config.credentials, "config"
    path = config.data_dir / CREDENTIALS_FILE
    if path.exists():
        stored = json.loads(path.read_text())
        return Credentials(stored["access_key"], stored["secret_key"]), str(path)
    creds = Credentials("TB" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
    config.data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dataclasses.asdict(creds), f)
    return creds, f"{path} (generated)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailbucket", description="Ship log files into growing S3 objects.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    srv = sub.add_parser("server", help="run the embedded S3-compatible server",
                         description="Run the S3-compatible server that stores growing (appendable) objects.")
    srv.add_argument("--config", type=Path, help="YAML config file")
    srv.add_argument("--data-dir", type=Path, help="where objects live (default ./data, or $STATE_DIRECTORY)")
    srv.add_argument("--listen", metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:9000)")
    for name in OTHER_COMMANDS:
        sub.add_parser(name, help=f"see 'tailbucket {name} --help'", add_help=False)
    return parser


def usage_hint(host: str, port: int, creds: Credentials) -> str:
    endpoint = f"http://{host}:{port}"
    return (
        f"tailbucket server on {endpoint}\n"
        f"  export AWS_ACCESS_KEY_ID={creds.access_key} AWS_SECRET_ACCESS_KEY={creds.secret_key} AWS_REGION=us-east-1\n"
        f"  aws --endpoint-url {endpoint} s3 mb s3://logs\n"
        f"  printf 'hello\\n' > /tmp/a; aws --endpoint-url {endpoint} s3 cp /tmp/a s3://logs/app.log\n"
        f"  printf 'world\\n' > /tmp/b; curl --aws-sigv4 aws:amz:us-east-1:s3 --user \"$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY\" \\\n"
        f"       -H 'x-amz-write-offset-bytes: 6' --data-binary @/tmp/b {endpoint}/logs/app.log\n"
        f"  aws --endpoint-url {endpoint} s3 cp s3://logs/app.log -\n"
    )


async def serve(config: ServerConfig, creds: Credentials, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run until SIGINT/SIGTERM; requests in flight finish under the shutdown deadline."""
    from server.app import S3App
    from server.config import ConfigError
    from server.http import HTTPConfig, HTTPServer
    from server.storage import Storage

    try:
        http_config = HTTPConfig(**config.http)
    except TypeError as exc:
        raise ConfigError(f"http: {exc}") from None
    # Caught from the start: a SIGTERM while the storage opens or just after "listening"
    # stops the server cleanly (storage closed, exit 0) rather than by the default action.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        storage = await Storage.open(config.data_dir, fsync=config.fsync)
        try:
            server = HTTPServer(S3App(storage, config, build_keyring(config, creds)), http_config)
            systemd = Notifier()
            async with trio.open_nursery() as nursery:
                host, port = await nursery.start(server.serve, *config.listen)
                log.info("listening", address=f"{host}:{port}", data_dir=str(config.data_dir), fsync=config.fsync)
                systemd.ready(f"serving S3 on {host}:{port}, data in {config.data_dir}")
                watchdog = trio.CancelScope()
                nursery.start_soon(_run_in, watchdog, systemd.run_watchdog)
                task_status.started((host, port))
                async for signum in signals:
                    log.info("stopping", signal=signal.Signals(signum).name)
                    systemd.stopping()
                    server.shutdown()
                    break
                watchdog.cancel()
        finally:
            await storage.aclose()
            log.info("stopped")


async def _run_in(scope: trio.CancelScope, fn) -> None:
    with scope:
        await fn()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in OTHER_COMMANDS:
        return importlib.import_module(OTHER_COMMANDS[argv[0]]).main(argv)
    args = build_parser().parse_args(argv)
    from server.config import ConfigError, load_config, parse_listen, with_overrides

    try:
        config = load_config(args.config)
        default_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        config = with_overrides(
            config,
            data_dir=args.data_dir or (Path(default_dir) if default_dir and args.config is None else None),
            listen=parse_listen(args.listen, "--listen") if args.listen else None,
        )
        configure_logging(config.log_format, config.log_level)
        creds, source = resolve_credentials(config, dict(os.environ))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"tailbucket server: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    if source.endswith("(generated)") or source.endswith(CREDENTIALS_FILE):
        print(usage_hint(config.listen[0], config.listen[1], creds), file=sys.stderr, flush=True)
    keep_large_buffers_in_heap()
    try:
        trio.run(serve, config, creds)
    except ConfigError as exc:
        print(f"tailbucket server: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
