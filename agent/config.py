"""The agent's configuration: frozen, typed, loaded from YAML and checked whole.

``parse_config`` is pure (a mapping and an environment in, an ``AgentConfig``
out), so every rule is testable without files.  Unknown keys, bad units and bad
templates are refused with the YAML path (``inputs[0].roll.max_bytes: "1 GiBB"
is not a size``): a typo must never fall back silently to a default.  ``${VAR}``
and ``${VAR:-default}`` are expanded in every string value first (``$$`` is a
literal ``$``), so units and numbers may come from the environment too.

These types describe the file; the runtime (tailers, checkpoint) has its own.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, TypeVar

import yaml

from agent.errors import ConfigError, KeyTemplateError
from agent.router import KeyTemplate, parse_template
from agent.units import GiB, MiB, parse_duration, parse_size

T = TypeVar("T")
DEFAULT_KEY = "{host}/{path}"
# Rotated logs compressed by logrotate & co. are copies of bytes already shipped.
DEFAULT_EXCLUDES = ("*.gz", "*.zst", "*.bz2", "*.xz")
MAX_PUT_BYTES = 5 * GiB  # S3's single-PUT limit, so also an append's
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_INPUT_NAME = re.compile(r"[A-Za-z0-9._-]+")
_MISSING: Any = object()


@dataclass(frozen=True)
class SinkConfig:
    bucket: str
    endpoint_url: str | None = None  # None: AWS's regional endpoint
    region: str = "us-east-1"
    profile: str | None = None
    access_key_id: str | None = None  # both or neither; neither: profile / environment
    secret_access_key: str | None = None
    addressing: Literal["path", "virtual"] = "path"
    append_objects: Literal["auto", "off"] = "auto"  # many streams' appends per request where the server offers it


@dataclass(frozen=True)
class RollConfig:
    """When to start a new object for a stream (``None``: never for that reason)."""

    max_bytes: int | None = None
    max_appends: int | None = None
    every: Literal["hour", "day"] | None = None


@dataclass(frozen=True)
class InputConfig:
    index: int
    paths: tuple[str, ...]  # absolute, normalised globs; ``**`` spans directories
    key: KeyTemplate
    name: str | None = None
    exclude: tuple[str, ...] = DEFAULT_EXCLUDES
    read_from: Literal["beginning", "end"] = "beginning"  # for files present at start-up only
    roll: RollConfig = RollConfig()
    compression: Literal["none", "gzip"] = "none"

    @property
    def label(self) -> str:
        """What ``{input}`` renders to: the name, else the index."""
        return self.name if self.name is not None else str(self.index)


@dataclass(frozen=True)
class BatchConfig:
    max_bytes: int = 1 * MiB
    max_wait: float = 0.2


@dataclass(frozen=True)
class HttpConfig:
    listen: tuple[str, int] = ("127.0.0.1", 9101)


@dataclass(frozen=True)
class LogConfig:
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class AgentConfig:
    sink: SinkConfig
    inputs: tuple[InputConfig, ...]
    batch: BatchConfig = BatchConfig()
    state_dir: Path = Path("/var/lib/tailbucket")
    http: HttpConfig = HttpConfig()
    log: LogConfig = LogConfig()
    host: str | None = None  # {host}; None: the machine's host name
    watch: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval: float = 1.0
    rescan_interval: float = 10.0
    partial_line_timeout: float = 5.0
    shutdown_timeout: float = 10.0
    max_in_flight: int = 4
    max_read_ahead: int = 64 * MiB  # bytes read but not yet acknowledged, all streams together


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and parse a YAML file (``env`` defaults to ``os.environ``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"cannot read {path}: {exc}") from exc
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from exc
    return parse_config(document, os.environ if env is None else env)


def parse_config(document: Any, env: Mapping[str, str]) -> AgentConfig:
    """Validate a parsed YAML document into an ``AgentConfig`` (pure)."""
    if document is None:
        raise ConfigError("", "the config is empty")
    root = _Section(_expand(document, env, ""), "")
    batch = root.take("batch", _batch, BatchConfig())
    config = AgentConfig(
        sink=root.take("sink", _sink),
        inputs=root.take("inputs", _inputs),
        batch=batch,
        state_dir=Path(root.take("state_dir", _absolute_path, "/var/lib/tailbucket")),
        http=root.take("http", _http, HttpConfig()),
        log=root.take("log", _log, LogConfig()),
        host=root.take("host", _host, None),
        watch=root.take("watch", _choice("auto", "inotify", "poll"), "auto"),
        poll_interval=root.take("poll_interval", _duration(positive=True), 1.0),
        rescan_interval=root.take("rescan_interval", _duration(positive=True), 10.0),
        partial_line_timeout=root.take("partial_line_timeout", _duration(), 5.0),
        shutdown_timeout=root.take("shutdown_timeout", _duration(), 10.0),
        max_in_flight=root.take("max_in_flight", _int(minimum=1), 4),
        max_read_ahead=root.take("max_read_ahead", _size(minimum=1), 64 * MiB),
    )
    root.done()
    if config.max_read_ahead < batch.max_bytes:
        raise ConfigError("max_read_ahead", f"{config.max_read_ahead} bytes is less than batch.max_bytes ({batch.max_bytes})")
    return config


# -- sections ---------------------------------------------------------------


def _sink(value: Any, path: str) -> SinkConfig:
    s = _Section(value, path)
    sink = SinkConfig(
        bucket=s.take("bucket", _bucket),
        endpoint_url=s.take("endpoint_url", _url, None),
        region=s.take("region", _string, "us-east-1"),
        profile=s.take("profile", _string, None),
        access_key_id=s.take("access_key_id", _string, None),
        secret_access_key=s.take("secret_access_key", _string, None),
        addressing=s.take("addressing", _choice("path", "virtual"), "path"),
        append_objects=s.take("append_objects", _choice("auto", "off"), "auto"),
    )
    s.done()
    if (sink.access_key_id is None) != (sink.secret_access_key is None):
        missing = "secret_access_key" if sink.secret_access_key is None else "access_key_id"
        raise ConfigError(_join(path, missing), "is required when the other half of the key pair is set")
    return sink


def _inputs(value: Any, path: str) -> tuple[InputConfig, ...]:
    items = _list(value, path)
    if not items:
        raise ConfigError(path, "needs at least one input")
    inputs = tuple(_input(item, f"{path}[{i}]", i) for i, item in enumerate(items))
    seen: dict[str, int] = {}
    for i, item in enumerate(inputs):
        if item.name is not None and seen.setdefault(item.name, i) != i:
            raise ConfigError(f"{path}[{i}].name", f"{item.name!r} is already the name of inputs[{seen[item.name]}]")
    return inputs


def _input(value: Any, path: str, index: int) -> InputConfig:
    s = _Section(value, path)
    result = InputConfig(
        index=index,
        name=s.take("name", _input_name, None),
        paths=s.take("paths", _globs),
        exclude=s.take("exclude", _patterns, DEFAULT_EXCLUDES),
        key=s.take("key", _template, parse_template(DEFAULT_KEY)),
        read_from=s.take("read_from", _choice("beginning", "end"), "beginning"),
        roll=s.take("roll", _roll, RollConfig()),
        compression=s.take("compression", _choice("none", "gzip"), "none"),
    )
    s.done()
    return result


def _roll(value: Any, path: str) -> RollConfig:
    s = _Section(value, path)
    roll = RollConfig(
        max_bytes=s.take("max_bytes", _size(minimum=1), None),
        max_appends=s.take("max_appends", _int(minimum=1), None),
        every=s.take("every", _choice("hour", "day"), None),
    )
    s.done()
    return roll


def _batch(value: Any, path: str) -> BatchConfig:
    s = _Section(value, path)
    batch = BatchConfig(
        max_bytes=s.take("max_bytes", _size(minimum=1, maximum=MAX_PUT_BYTES), 1 * MiB),
        max_wait=s.take("max_wait", _duration(), 0.2),
    )
    s.done()
    return batch


def _http(value: Any, path: str) -> HttpConfig:
    s = _Section(value, path)
    http = HttpConfig(listen=s.take("listen", _listen, ("127.0.0.1", 9101)))
    s.done()
    return http


def _log(value: Any, path: str) -> LogConfig:
    s = _Section(value, path)
    log = LogConfig(
        format=s.take("format", _choice("auto", "json", "console"), "auto"),
        level=s.take("level", _choice("debug", "info", "warning", "error"), "info"),
    )
    s.done()
    return log


# -- the walker -------------------------------------------------------------


class _Section:
    """One YAML mapping being consumed; what is left at ``done()`` is unknown."""

    def __init__(self, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected a mapping, got {_kind(value)}")
        self.values = dict(value)
        self.path = path
        self.known: list[str] = []

    def take(self, key: str, parse: Callable[[Any, str], T], default: Any = _MISSING) -> T:
        self.known.append(key)
        value = self.values.pop(key, None)
        if value is None or value == "":
            if default is _MISSING:
                raise ConfigError(_join(self.path, key), "is required")
            return default
        return parse(value, _join(self.path, key))

    def done(self) -> None:
        for key in self.values:
            known = ", ".join(sorted(self.known))
            raise ConfigError(_join(self.path, str(key)), f"unknown key (known here: {known})")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


_ENV_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\{)")


def _expand(value: Any, env: Mapping[str, str], path: str) -> Any:
    """``${VAR}``/``${VAR:-default}`` in every string (keys excepted); ``$$`` is ``$``."""
    if isinstance(value, dict):
        return {k: _expand(v, env, _join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        text, name, default = match.group(0), match.group(1), match.group(2)
        if text == "$$":
            return "$"
        if name is None:
            raise ConfigError(path, f"bad variable reference in {value!r} (use ${{NAME}} or ${{NAME:-default}})")
        if env.get(name):
            return env[name]
        if default is not None:
            return default
        if name in env:
            return ""
        raise ConfigError(path, f"environment variable {name} is not set (use ${{{name}:-default}} for a default)")

    return _ENV_REF.sub(replace, value)


# -- values -----------------------------------------------------------------


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {_kind(value)}")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected a list, got {_kind(value)}")
    return value


def _choice(*options: str) -> Callable[[Any, str], Any]:
    def parse(value: Any, path: str) -> str:
        if value not in options:
            raise ConfigError(path, f"{value!r} is not one of: {', '.join(options)}")
        return value

    return parse


def _size(minimum: int = 0, maximum: int | None = None) -> Callable[[Any, str], int]:
    def parse(value: Any, path: str) -> int:
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
        if size < minimum or (maximum is not None and size > maximum):
            bounds = f"at least {minimum}" + (f" and at most {maximum}" if maximum is not None else "")
            raise ConfigError(path, f"{value!r} must be {bounds} bytes")
        return size

    return parse


def _duration(positive: bool = False) -> Callable[[Any, str], float]:
    def parse(value: Any, path: str) -> float:
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
        if positive and seconds <= 0:
            raise ConfigError(path, f"{value!r} must be longer than zero")
        return seconds

    return parse


def _int(minimum: int) -> Callable[[Any, str], int]:
    def parse(value: Any, path: str) -> int:
        if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"{value!r} is not a whole number")
        if value < minimum:
            raise ConfigError(path, f"{value} must be at least {minimum}")
        return value

    return parse


def _bucket(value: Any, path: str) -> str:
    name = _string(value, path)
    if not _BUCKET.fullmatch(name) or ".." in name:
        raise ConfigError(path, f"{name!r} is not a valid bucket name (3-63 of a-z 0-9 . -)")
    return name


def _url(value: Any, path: str) -> str:
    url = _string(value, path)
    if not re.fullmatch(r"https?://[^/\s]+/?", url):
        raise ConfigError(path, f"{url!r} is not an http:// or https:// endpoint URL (scheme://host[:port])")
    return url.rstrip("/")


def _listen(value: Any, path: str) -> tuple[str, int]:
    text = _string(value, path)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit() or int(port) > 65535:
        raise ConfigError(path, f"{text!r} is not HOST:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _host(value: Any, path: str) -> str:
    host = _string(value, path)
    if "/" in host or not host.strip():
        raise ConfigError(path, f"{host!r} is not a host name")
    return host


def _input_name(value: Any, path: str) -> str:
    name = _string(value, path)
    if not _INPUT_NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(path, f"{name!r} is not a name (letters, digits, . _ -)")
    return name


def _absolute_path(value: Any, path: str) -> str:
    text = _string(value, path)
    if not text.startswith("/"):
        raise ConfigError(path, f"{text!r} must be an absolute path")
    return posixpath.normpath(text)


def _globs(value: Any, path: str) -> tuple[str, ...]:
    globs = tuple(_absolute_path(item, f"{path}[{i}]") for i, item in enumerate(_list(value, path)))
    if not globs:
        raise ConfigError(path, "needs at least one path")
    return globs


def _patterns(value: Any, path: str) -> tuple[str, ...]:
    return tuple(_string(item, f"{path}[{i}]") for i, item in enumerate(_list(value, path)))


def _template(value: Any, path: str) -> KeyTemplate:
    try:
        return parse_template(_string(value, path))
    except KeyTemplateError as exc:
        raise ConfigError(path, str(exc)) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
