"""Configuration from the environment alone, and ``tailbucket agent --print-config``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import load_config, parse_config
from agent.envconfig import config_from_env, env_document, render_config
from agent.errors import ConfigError
from tests.support import REPO

BASE = {"TAILBUCKET_PATHS": "/logs/*.log", "TAILBUCKET_BUCKET": "logs"}


def test_the_environment_makes_a_full_config() -> None:
    config = config_from_env({
        "TAILBUCKET_PATHS": "/logs/*.log, /var/log/app/**/*.log:/srv/x.log",
        "TAILBUCKET_BUCKET": "logs",
        "TAILBUCKET_KEY": "{host}/{name}",
        "TAILBUCKET_STATE_DIR": "/var/lib/tb",
        "TAILBUCKET_HOST": "web-0",
        "TAILBUCKET_HTTP_LISTEN": "0.0.0.0:9101",
        "AWS_ENDPOINT_URL": "http://s3.local:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",  # left to the sink's own AWS_* lookup
    })
    assert config.inputs[0].paths == ("/logs/*.log", "/var/log/app/**/*.log", "/srv/x.log")
    assert config.inputs[0].key.source == "{host}/{name}"
    assert (config.sink.bucket, config.sink.endpoint_url, config.sink.region) == ("logs", "http://s3.local:9000", "eu-west-1")
    assert config.sink.access_key_id is None and config.sink.secret_access_key is None
    assert (config.state_dir, config.host, config.http.listen) == (Path("/var/lib/tb"), "web-0", ("0.0.0.0", 9101))
    assert config.log.format == "json"


def test_defaults_and_the_tailbucket_endpoint_wins() -> None:
    config = config_from_env({**BASE, "TAILBUCKET_ENDPOINT": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"})
    assert config.inputs[0].key.source == "{host}/{path}"
    assert config.state_dir == Path("/var/lib/tailbucket") and config.host is None
    assert config.sink.endpoint_url == "http://a:1"


def test_values_are_taken_literally_not_expanded() -> None:
    assert env_document({**BASE, "TAILBUCKET_KEY": "a$b/{name}"})["inputs"][0]["key"] == "a$$b/{name}"
    assert config_from_env({**BASE, "TAILBUCKET_KEY": "a$b/{name}"}).inputs[0].key.source == "a$b/{name}"


@pytest.mark.parametrize(("env", "variable", "words"), [
    ({"TAILBUCKET_BUCKET": "logs"}, "TAILBUCKET_PATHS", "is not set"),
    ({"TAILBUCKET_PATHS": "/l/*.log", "TAILBUCKET_BUCKET": " "}, "TAILBUCKET_BUCKET", "is not set"),
    ({**BASE, "TAILBUCKET_PATHS": "logs/*.log"}, "TAILBUCKET_PATHS", "absolute"),
    ({**BASE, "TAILBUCKET_KEY": "{nope}"}, "TAILBUCKET_KEY", "nope"),
    ({**BASE, "TAILBUCKET_HTTP_LISTEN": "9101"}, "TAILBUCKET_HTTP_LISTEN", "HOST:PORT"),
    ({**BASE, "TAILBUCKET_STATE_DIR": "state"}, "TAILBUCKET_STATE_DIR", "absolute"),
    ({**BASE, "AWS_ENDPOINT_URL": "not a url"}, "AWS_ENDPOINT_URL", ""),
    ({**BASE, "TAILBUCKET_SHUTDOWN_TIMEOUT": "soon"}, "TAILBUCKET_SHUTDOWN_TIMEOUT", "duration"),
])
def test_a_bad_or_missing_variable_is_named(env: dict[str, str], variable: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from_env(env)
    assert caught.value.path == variable and words in caught.value.message


def test_print_config_reads_back_to_the_same_config(tmp_path: Path) -> None:
    original = load_config(REPO / "config" / "agent.yaml", {"HOSTNAME": "h"})
    text = render_config(original)
    assert parse_config(yaml.safe_load(text), {}) == original


def test_print_config_masks_secrets() -> None:
    document = yaml.safe_load(render_config(parse_config({
        "sink": {"bucket": "logs", "access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG"},
        "inputs": [{"paths": ["/l/*.log"]}],
    }, {})))
    assert document["sink"]["secret_access_key"] == "********"
    assert document["sink"]["access_key_id"] == "AKIA********"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", "agent", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})


def test_the_command_prints_the_env_config_and_refuses_a_missing_variable() -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    shown = run_cli("--print-config", env={**BASE, "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": secret})
    assert shown.returncode == 0, shown.stderr
    assert secret not in shown.stdout and "AKIAIOSFODNN7EXAMPLE" not in shown.stdout
    assert yaml.safe_load(shown.stdout)["inputs"][0]["paths"] == ["/logs/*.log"]
    refused = run_cli(env={"TAILBUCKET_PATHS": "/logs/*.log"})
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "tailbucket agent: TAILBUCKET_BUCKET: is not set (without --config the environment is the config)"]
