"""``tailbucket agent`` and ``tailbucket validate``: the agent's commands.

``server.cli`` dispatches both here with ``argv`` starting at the subcommand
name.  Every failure is one line on stderr and a non-zero exit:

* ``tailbucket agent --config FILE``: run the daemon until SIGTERM/SIGINT
  (exit 0 once drained and the checkpoint is written); SIGHUP reloads inputs.
  Exit 1 for a bad config or a fatal error, 2 for a usage error.  Without
  ``--config`` the environment is the config (``agent.envconfig``; a missing
  or bad variable is named, exit 2); ``--print-config`` shows the effective
  config, secrets masked, and exits 0.
* ``tailbucket validate --config FILE [--check-sink]``: check the config
  (exit 0, or 1 with the YAML path of the first problem); with
  ``--check-sink`` also prove the bucket takes appends, step by step.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import typing
from pathlib import Path

import structlog
import trio

from agent import events
from agent.app import run_agent
from agent.config import AgentConfig, load_config
from agent.connect import SinkHealth, check_sink, open_s3
from agent.envconfig import config_from_env, credentials_note, render_config
from agent.errors import AgentError, ConfigError
from sink.errors import SinkError
from sink.logs import configure_logging

log = structlog.get_logger()
EXIT_FAILED, EXIT_USAGE = 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a misuse is one line and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "agent":
        p = _Parser(prog="tailbucket agent", description="Tail log files into growing S3 objects, exactly once.")
    else:
        p = _Parser(prog="tailbucket validate", description="Check an agent config (and, optionally, the sink).")
        p.add_argument("--check-sink", action="store_true",
                       help="also create a probe object, append to it, read it back and delete it")
    p.add_argument("--config", required=command != "agent", type=Path, metavar="FILE",
                   help="the agent's YAML config" + (" (default: from TAILBUCKET_* variables)" if command == "agent" else ""))
    if command == "agent":
        p.add_argument("--print-config", action="store_true", help="print the effective config (secrets masked) and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("agent", "validate"):
        print("tailbucket: expected 'agent' or 'validate'", file=sys.stderr)
        return EXIT_USAGE
    parser = _parser(argv[0])
    command, args = argv[0], parser.parse_args(argv[1:])
    prog = f"tailbucket {command}"
    if args.config is None and not any(name.startswith("TAILBUCKET_") for name in os.environ):
        parser.error("the following arguments are required: --config (or TAILBUCKET_PATHS and TAILBUCKET_BUCKET)")
    if args.config is None:
        try:
            config = config_from_env(os.environ)
        except ConfigError as exc:
            print(f"{prog}: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_USAGE
        if args.print_config:
            print(f"# from the environment\n{credentials_note(os.environ)}\n{render_config(config)}", end="")
            return 0
        return _run(prog, config, None)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        message = " ".join(str(exc).split())  # YAML errors come on several lines
        where = "" if not exc.path and str(args.config) in message else f"{args.config}: "
        print(f"{prog}: {where}{message}", file=sys.stderr)
        return EXIT_FAILED
    if command == "validate":
        return validate(config, args.config, check=args.check_sink)
    if args.print_config:
        print(f"# from {args.config}\n{render_config(config)}", end="")
        return 0
    return _run(prog, config, args.config)


def _run(prog: str, config: AgentConfig, config_path: Path | None) -> int:
    configure_logging(config.log.format, config.log.level)
    try:
        trio.run(run_agent, config, config_path)
    except KeyboardInterrupt:
        return 128 + 2
    except BaseException as exc:  # noqa: BLE001 - every failure is one line and an exit status
        leaf = _leaf(exc)
        if isinstance(leaf, (SystemExit, KeyboardInterrupt)):
            raise
        known = isinstance(leaf, (AgentError, SinkError, OSError))
        log.error(events.AGENT_FAILED, error=str(leaf), error_type=type(leaf).__name__, exc_info=None if known else leaf)
        print(f"{prog}: {leaf if known else f'internal error {type(leaf).__name__}: {leaf}'}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def validate(config: AgentConfig, path: Path, *, check: bool) -> int:
    inputs = ", ".join(spec.label for spec in config.inputs)
    print(f"{path}: ok ({len(config.inputs)} input(s): {inputs}; bucket {config.sink.bucket})")
    if not check:
        return 0
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(50))  # the steps say it all
    try:
        steps = trio.run(_check_sink, config)
    except (SinkError, AgentError, OSError) as exc:
        print(f"sink check failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for step in steps:
        print(f"  {'ok  ' if step.error is None else 'FAIL'} {step.name}" + (f": {step.error}" if step.error else ""))
    failed = [s for s in steps if s.error is not None]
    if failed:
        print(f"sink check failed: {failed[0].name}: {failed[0].error}", file=sys.stderr)
        return EXIT_FAILED
    print(f"sink ok: {config.sink.bucket} accepts appends")
    return 0


async def _check_sink(config: AgentConfig) -> list:  # type: ignore[type-arg]
    async with open_s3(config.sink, SinkHealth(), env=os.environ) as client:
        return await check_sink(client, config.sink.bucket, config.host or socket.gethostname())


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside trio's exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)] or list(exc.exceptions)
        exc = inner[0]
    return exc


if __name__ == "__main__":
    sys.exit(main())
