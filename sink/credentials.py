"""Find credentials, region and endpoint the way the AWS tools do.

A pure function over an environment mapping and two INI files, so the whole
precedence matrix is testable with ``tmp_path``. It reads files with plain
blocking I/O: call it at start-up, or through ``trio.to_thread.run_sync``.

Precedence (AWS SDKs and Tools Reference Guide, "Standardized credential
providers", "Shared config and credentials files", "Service-specific endpoints"):

* credentials: explicit arguments > ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
  (+ ``AWS_SESSION_TOKEN``) > the profile in the credentials file > the
  profile in the config file. An explicit ``profile`` argument skips the
  environment keys (as ``boto3.Session(profile_name=...)`` does).
* profile: explicit > ``AWS_PROFILE`` > ``AWS_DEFAULT_PROFILE`` > ``default``.
* files: ``AWS_SHARED_CREDENTIALS_FILE`` / ``AWS_CONFIG_FILE``, else
  ``~/.aws/credentials`` / ``~/.aws/config`` (``~`` from ``HOME``). The
  credentials file names sections ``[NAME]``; the config file ``[default]``
  and ``[profile NAME]``.
* region: explicit > ``AWS_REGION`` > ``AWS_DEFAULT_REGION`` > profile ``region`` > us-east-1.
* endpoint: explicit > ``AWS_ENDPOINT_URL_S3`` > ``AWS_ENDPOINT_URL`` > the
  profile's ``services`` section ``s3 = endpoint_url = ...`` > the profile's
  ``endpoint_url`` > none (AWS). ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true``
  ignores all configured endpoints.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, CredentialsError

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class ResolvedConfig:
    """Everything needed to talk to S3. Secrets stay out of ``repr``."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str
    endpoint_url: str | None
    source: str = "explicit"  # where the keys came from, for log lines


def _read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, default_section="__no_defaults__")
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=str(path))
    except FileNotFoundError:
        pass
    except (configparser.Error, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse {path}: {exc}") from exc
    return parser


def _section(parser: configparser.ConfigParser, name: str) -> dict[str, str] | None:
    return dict(parser[name]) if parser.has_section(name) else None


def _config_profile(parser: configparser.ConfigParser, profile: str) -> dict[str, str] | None:
    """``[profile NAME]``; ``default`` may also be spelled ``[default]``."""
    found = _section(parser, f"profile {profile}")
    if found is None and profile == "default":
        found = _section(parser, "default")
    return found


def _services_s3_endpoint(parser: configparser.ConfigParser, profile: dict[str, str]) -> str | None:
    """``services = NAME`` points at ``[services NAME]`` whose ``s3`` value is
    an indented block of ``key = value`` lines."""
    name = profile.get("services")
    section = _section(parser, f"services {name}") if name else None
    block = section.get("s3") if section else None
    for line in (block or "").splitlines():
        k, sep, v = line.partition("=")
        if sep and k.strip() == "endpoint_url":
            return v.strip() or None
    return None


def _home_path(env: Mapping[str, str], var: str, default: str) -> Path:
    if env.get(var):
        raw = env[var]
    else:
        raw = default
    if raw.startswith("~"):
        home = env.get("HOME") or os.path.expanduser("~")
        raw = home + raw[1:]
    return Path(raw)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def resolve_config(
    env: Mapping[str, str],
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    region: str | None = None,
    endpoint_url: str | None = None,
    profile: str | None = None,
    credentials_file: Path | None = None,
    config_file: Path | None = None,
) -> ResolvedConfig:
    """Resolve the settings; raise CredentialsError naming what to set."""
    explicit_profile = profile is not None
    profile_name = profile or env.get("AWS_PROFILE") or env.get("AWS_DEFAULT_PROFILE") or "default"
    cred_path = credentials_file or _home_path(env, "AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
    conf_path = config_file or _home_path(env, "AWS_CONFIG_FILE", "~/.aws/config")
    cred_ini = _read_ini(cred_path)
    conf_ini = _read_ini(conf_path)
    cred_section = _section(cred_ini, profile_name)
    conf_section = _config_profile(conf_ini, profile_name)
    if profile_name != "default" and cred_section is None and conf_section is None:
        raise ConfigError(f"AWS profile {profile_name!r} not found in {cred_path} or {conf_path}")
    conf_section = conf_section or {}

    keys = _pick_keys(
        env if not explicit_profile else {},
        (access_key_id, secret_access_key, session_token),
        [(cred_section or {}, f"{cred_path} [{profile_name}]"), (conf_section, f"{conf_path} profile {profile_name!r}")],
    )
    if keys is None:
        raise CredentialsError(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            f"or aws_access_key_id/aws_secret_access_key in {cred_path} [{profile_name}] "
            f"(profile from AWS_PROFILE, default 'default')"
        )
    key_id, secret, token, source = keys

    resolved_region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or conf_section.get("region")
    resolved_endpoint = endpoint_url
    if resolved_endpoint is None and not _truthy(env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")):
        resolved_endpoint = (
            env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or _services_s3_endpoint(conf_ini, conf_section)
            or conf_section.get("endpoint_url")
            or None
        )
    return ResolvedConfig(key_id, secret, token, resolved_region or DEFAULT_REGION, resolved_endpoint, source)


def _pick_keys(
    env: Mapping[str, str],
    explicit: tuple[str | None, str | None, str | None],
    sections: list[tuple[dict[str, str], str]],
) -> tuple[str, str, str | None, str] | None:
    """The first complete key pair, in precedence order. Half a pair in one
    place is an error rather than silently falling through to the next."""
    candidates: list[tuple[str | None, str | None, str | None, str, str]] = [
        (*explicit, "explicit", "access_key_id and secret_access_key"),
        (
            env.get("AWS_ACCESS_KEY_ID"),
            env.get("AWS_SECRET_ACCESS_KEY"),
            env.get("AWS_SESSION_TOKEN") or env.get("AWS_SECURITY_TOKEN"),
            "environment",
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
    ]
    for section, where in sections:
        candidates.append(
            (
                section.get("aws_access_key_id"),
                section.get("aws_secret_access_key"),
                section.get("aws_session_token"),
                where,
                f"aws_access_key_id and aws_secret_access_key in {where}",
            )
        )
    for key_id, secret, token, source, names in candidates:
        if key_id and secret:
            return key_id, secret, token or None, source
        if key_id or secret:
            raise CredentialsError(f"incomplete credentials from {source}: set both {names}")
    return None
