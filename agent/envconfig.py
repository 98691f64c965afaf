"""The agent's config from the environment alone (containers), and the effective config as YAML.

A container is configured by its environment, not by a mounted file.  With
no ``--config`` these variables build the same mapping a YAML file would give,
and ``agent.config.parse_config`` validates it, so there is one validator and
one set of messages; only the name in a message changes, from the YAML path
to the variable that fed it:

* ``TAILBUCKET_PATHS`` (required): globs, separated by ``,`` or ``:``;
* ``TAILBUCKET_BUCKET`` (required);
* ``TAILBUCKET_KEY``: the key template (default ``{host}/{path}``);
* ``TAILBUCKET_STATE_DIR`` (default ``/var/lib/tailbucket``);
* ``TAILBUCKET_HOST``: what ``{host}`` renders to (default: the host name);
* ``TAILBUCKET_HTTP_LISTEN``: ``HOST:PORT`` of ``/health``, ``/ready``, ``/metrics``;
* ``TAILBUCKET_ENDPOINT`` or ``AWS_ENDPOINT_URL``; ``AWS_REGION`` / ``AWS_DEFAULT_REGION``;
* ``TAILBUCKET_LOG_LEVEL``, ``TAILBUCKET_SHUTDOWN_TIMEOUT``.

Credentials are not copied into the config: the sink reads the standard
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` /
``AWS_PROFILE`` itself, exactly as for a YAML config without keys.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from agent.config import AgentConfig, parse_config
from agent.errors import ConfigError
from agent.router import KeyTemplate

REQUIRED = ("TAILBUCKET_PATHS", "TAILBUCKET_BUCKET")
MASK = "********"

# Where in the mapping each variable lands: a YAML path (as ConfigError names it) -> the variable.
_SOURCES = {
    "inputs[0].paths": "TAILBUCKET_PATHS",
    "inputs[0].key": "TAILBUCKET_KEY",
    "sink.bucket": "TAILBUCKET_BUCKET",
    "sink.endpoint_url": "TAILBUCKET_ENDPOINT",
    "sink.region": "AWS_REGION",
    "state_dir": "TAILBUCKET_STATE_DIR",
    "host": "TAILBUCKET_HOST",
    "http.listen": "TAILBUCKET_HTTP_LISTEN",
    "log.level": "TAILBUCKET_LOG_LEVEL",
    "shutdown_timeout": "TAILBUCKET_SHUTDOWN_TIMEOUT",
}


def env_document(env: Mapping[str, str]) -> dict[str, Any]:
    """The mapping a YAML config would give, built from ``env`` (pure); ConfigError names a missing variable."""
    for name in REQUIRED:
        if not env.get(name, "").strip():
            raise ConfigError(name, "is not set (without --config the environment is the config)")
    globs = [g.strip() for g in re.split(r"[,:]", env["TAILBUCKET_PATHS"]) if g.strip()]
    sink: dict[str, Any] = {"bucket": env["TAILBUCKET_BUCKET"].strip()}
    endpoint = env.get("TAILBUCKET_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        sink["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        sink["region"] = region
    document: dict[str, Any] = {"sink": sink, "inputs": [{"paths": globs, "key": env.get("TAILBUCKET_KEY") or "{host}/{path}"}]}
    optional = {"state_dir": "TAILBUCKET_STATE_DIR", "host": "TAILBUCKET_HOST",
                "shutdown_timeout": "TAILBUCKET_SHUTDOWN_TIMEOUT"}
    for key, name in optional.items():
        if env.get(name):
            document[key] = env[name]
    if env.get("TAILBUCKET_HTTP_LISTEN"):
        document["http"] = {"listen": env["TAILBUCKET_HTTP_LISTEN"]}
    document["log"] = {"format": "json", "level": env.get("TAILBUCKET_LOG_LEVEL") or "info"}
    return _escaped(document)


def config_from_env(env: Mapping[str, str]) -> AgentConfig:
    """Validate ``env_document`` with ``parse_config``; a ConfigError names the variable, not a YAML path."""
    try:
        return parse_config(env_document(env), {})
    except ConfigError as exc:
        raise ConfigError(_variable_for(exc.path, env), exc.message) from None


def render_config(config: AgentConfig) -> str:
    """The effective config as YAML a file could hold, secrets masked (``--print-config``)."""
    document = _plain(config)
    sink = document["sink"]
    if sink.get("secret_access_key"):
        sink["secret_access_key"] = MASK
    if sink.get("access_key_id"):
        sink["access_key_id"] = mask_key_id(sink["access_key_id"])
    for item in document["inputs"]:
        item.pop("index", None)
    host, port = config.http.listen
    document["http"]["listen"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def credentials_note(env: Mapping[str, str]) -> str:
    """A YAML comment saying where the sink's keys come from when the config has none (masked)."""
    key_id = env.get("AWS_ACCESS_KEY_ID")
    if key_id:
        secret = "set" if env.get("AWS_SECRET_ACCESS_KEY") else "NOT SET"
        return f"# credentials: AWS_ACCESS_KEY_ID={mask_key_id(key_id)}, AWS_SECRET_ACCESS_KEY {secret} ({MASK})"
    return f"# credentials: AWS profile {env.get('AWS_PROFILE') or 'default'} (no AWS_ACCESS_KEY_ID)"


def mask_key_id(key_id: str) -> str:
    """Enough of an access key id to tell keys apart, not enough to use one."""
    return key_id[:4] + MASK if len(key_id) > 8 else MASK


def _variable_for(path: str, env: Mapping[str, str]) -> str:
    for prefix, name in _SOURCES.items():
        if path == prefix or path.startswith(prefix + "[") or path.startswith(prefix + "."):
            if name == "TAILBUCKET_ENDPOINT" and not env.get(name):
                return "AWS_ENDPOINT_URL_S3" if env.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
            if name == "AWS_REGION" and not env.get(name):
                return "AWS_DEFAULT_REGION"
            return name
    return path or "environment"


def _escaped(value: Any) -> Any:
    """``$`` doubled, so parse_config's ``${VAR}`` expansion leaves the environment's values as they are."""
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value.replace("$", "$$") if isinstance(value, str) else value


def _plain(value: Any) -> Any:
    """Dataclasses as mappings parse_config takes back (unset optional values left out)."""
    if isinstance(value, KeyTemplate):
        return value.source
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
        return {name: _plain(v) for name, v in fields if v is not None}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
