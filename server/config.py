"""The server's configuration: one typed, frozen object, loaded from YAML.

Unknown keys are refused (a typo must not silently fall back to a default),
and every message names the YAML path of the bad value.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
SECONDS = 1.0
MINUTES = 60 * SECONDS

DEFAULT_LISTEN = ("127.0.0.1", 9000)
MAX_OBJECT_BODY = 5 * GiB  # S3's limit for a single PUT


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names its YAML path."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class ServerConfig:
    listen: tuple[str, int] = DEFAULT_LISTEN
    data_dir: Path = Path("data")
    region: str = "us-east-1"
    credentials: Credentials | None = None  # None: from the environment, or generated on first start
    fsync: bool = True  # False: a crash (of the machine, not the process) may lose acknowledged appends
    max_appends: int | None = None  # per-object append limit; 10000 imitates S3 Express One Zone
    max_body: int = MAX_OBJECT_BODY
    virtual_host_domains: tuple[str, ...] = ("localhost",)
    max_clock_skew: float = 15 * MINUTES
    http: Mapping[str, Any] = field(default_factory=dict)  # HTTPConfig fields, validated by the CLI
    log_format: str = "auto"
    log_level: str = "info"


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str], where: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}``; an unset VAR without default is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _ENV_REF.sub(replace, text)


def parse_listen(value: str, where: str = "listen") -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: {value!r} is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    return value


def _refuse_unknown(section: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in section:
        if key not in known:
            prefix = f"{where}." if where else ""
            raise ConfigError(f"{prefix}{key}: unknown key (known: {', '.join(sorted(known))})")


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str]) -> ServerConfig:
    """Build a ServerConfig from a parsed YAML mapping (pure: no file access)."""
    raw = _expect(raw or {}, dict, "(top level)")
    _refuse_unknown(raw, {"listen", "data_dir", "region", "credentials", "fsync", "max_appends",
                          "virtual_host_domains", "http", "log"}, "")
    values: dict[str, Any] = {}
    if "listen" in raw:
        values["listen"] = parse_listen(expand_env(str(raw["listen"]), env, "listen"))
    if "data_dir" in raw:
        values["data_dir"] = Path(expand_env(_expect(raw["data_dir"], str, "data_dir"), env, "data_dir"))
    if "region" in raw:
        values["region"] = _expect(raw["region"], str, "region")
    if "fsync" in raw:
        values["fsync"] = _expect(raw["fsync"], bool, "fsync")
    if raw.get("max_appends") is not None:
        limit = _expect(raw["max_appends"], int, "max_appends")
        if limit < 1:
            raise ConfigError(f"max_appends: must be at least 1, got {limit}")
        values["max_appends"] = limit
    if "virtual_host_domains" in raw:
        domains = _expect(raw["virtual_host_domains"], list, "virtual_host_domains")
        values["virtual_host_domains"] = tuple(
            _expect(d, str, f"virtual_host_domains[{i}]").lower() for i, d in enumerate(domains)
        )
    if "credentials" in raw:
        creds = _expect(raw["credentials"], dict, "credentials")
        _refuse_unknown(creds, {"access_key", "secret_key"}, "credentials")
        try:
            values["credentials"] = Credentials(
                *(expand_env(_expect(creds[k], str, f"credentials.{k}"), env, f"credentials.{k}")
                  for k in ("access_key", "secret_key"))
            )
        except KeyError as exc:
            raise ConfigError(f"credentials.{exc.args[0]}: required") from None
    if "http" in raw:
        values["http"] = dict(_expect(raw["http"], dict, "http"))
    if "log" in raw:
        log = _expect(raw["log"], dict, "log")
        _refuse_unknown(log, {"format", "level"}, "log")
        fmt = log.get("format", "auto")
        if fmt not in ("auto", "json", "console"):
            raise ConfigError(f"log.format: must be auto, json or console, not {fmt!r}")
        values["log_format"] = fmt
        values["log_level"] = log.get("level", "info")
    return ServerConfig(**values)


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> ServerConfig:
    """Read the YAML file at ``path`` (None: all defaults)."""
    env = os.environ if env is None else env
    if path is None:
        return ServerConfig()
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(raw, env)


def with_overrides(config: ServerConfig, **changes: Any) -> ServerConfig:
    """The config with command-line values applied (``None`` means 'not given')."""
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
