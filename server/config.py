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

from server.policy import BUCKET_ROLES, AccessKey, Grant, Role

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
class Observability:
    """``observability:``: who may scrape /_tailbucket/metrics, and how fresh the storage gauges are."""

    require_auth: bool = False  # True: metrics need a signed request by an admin (all buckets) or a `metrics` key
    stats_cache_seconds: float = 5 * SECONDS  # objects/bytes stored are counted at most this often


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
    keys: tuple[AccessKey, ...] = ()  # besides the root credentials (admin on everything)
    observability: Observability = Observability()


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
                          "virtual_host_domains", "http", "log", "keys", "observability"}, "")
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
    if "keys" in raw:
        values["keys"] = parse_keys(raw["keys"], env)
    if "observability" in raw:
        values["observability"] = parse_observability(raw["observability"])
    return ServerConfig(**values)


def parse_keys(raw: Any, env: Mapping[str, str]) -> tuple[AccessKey, ...]:
    """``keys:``: access keys with ``${ENV}``-expandable secrets, each with its grants."""
    keys: list[AccessKey] = []
    seen: set[str] = set()
    for i, item in enumerate(_expect(raw, list, "keys")):
        where = f"keys[{i}]"
        item = _expect(item, dict, where)
        _refuse_unknown(item, {"access_key", "secret_key", "grants"}, where)
        for required in ("access_key", "secret_key", "grants"):
            if required not in item:
                raise ConfigError(f"{where}.{required}: required")
        access_key = expand_env(_expect(item["access_key"], str, f"{where}.access_key"), env, f"{where}.access_key")
        secret_key = expand_env(_expect(item["secret_key"], str, f"{where}.secret_key"), env, f"{where}.secret_key")
        if not access_key:
            raise ConfigError(f"{where}.access_key: must not be empty")
        if not secret_key:
            raise ConfigError(f"{where}.secret_key: must not be empty")
        if access_key in seen:
            raise ConfigError(f"{where}.access_key: {access_key!r} is configured twice")
        seen.add(access_key)
        grants = _expect(item["grants"], list, f"{where}.grants")
        if not grants:
            raise ConfigError(f"{where}.grants: a key needs at least one grant")
        parsed = tuple(_parse_grant(g, f"{where}.grants[{j}]") for j, g in enumerate(grants))
        keys.append(AccessKey(access_key, secret_key, parsed))
    return tuple(keys)


def _parse_grant(raw: Any, where: str) -> Grant:
    raw = _expect(raw, dict, where)
    _refuse_unknown(raw, {"role", "bucket", "prefix"}, where)
    names = [r.value for r in (*BUCKET_ROLES, Role.METRICS)]
    if raw.get("role") not in names:
        raise ConfigError(f"{where}.role: must be one of {', '.join(names)}, not {raw.get('role')!r}")
    role = Role(raw["role"])
    bucket = _expect(raw["bucket"], str, f"{where}.bucket") if "bucket" in raw else None
    prefix = _expect(raw["prefix"], str, f"{where}.prefix") if "prefix" in raw else ""
    if bucket is not None and (not bucket or "/" in bucket):
        raise ConfigError(f"{where}.bucket: {bucket!r} is not a bucket name")
    if role is Role.METRICS and (bucket is not None or prefix):
        raise ConfigError(f"{where}: a metrics grant has no bucket or prefix")
    if prefix and bucket is None:
        raise ConfigError(f"{where}.prefix: a prefix needs a bucket")
    if prefix and role is Role.ADMIN:
        raise ConfigError(f"{where}.prefix: admin grants cover whole buckets")
    return Grant(role, bucket, prefix)


def parse_observability(raw: Any) -> Observability:
    raw = _expect(raw, dict, "observability")
    _refuse_unknown(raw, {"require_auth", "stats_cache_seconds"}, "observability")
    values: dict[str, Any] = {}
    if "require_auth" in raw:
        values["require_auth"] = _expect(raw["require_auth"], bool, "observability.require_auth")
    if "stats_cache_seconds" in raw:
        ttl = _expect(raw["stats_cache_seconds"], (int, float), "observability.stats_cache_seconds")
        if isinstance(ttl, bool) or ttl < 0:
            raise ConfigError(f"observability.stats_cache_seconds: must be a number >= 0, got {ttl!r}")
        values["stats_cache_seconds"] = float(ttl)
    return Observability(**values)


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
