"""Config: every field, environment expansion, and each refusal naming its YAML path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    DEFAULT_EXCLUDES,
    AgentConfig,
    BatchConfig,
    HttpConfig,
    LogConfig,
    RollConfig,
    SinkConfig,
    load_config,
    parse_config,
)
from agent.errors import ConfigError
from agent.units import GiB, MiB

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "agent.yaml"
MINIMAL: dict[str, Any] = {"sink": {"bucket": "logs"}, "inputs": [{"paths": ["/var/log/*.log"]}]}


def with_(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with one value set at a dotted path (``inputs.0.roll.max_bytes``)."""
    document = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    node: Any = document
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    node[int(last) if last.isdigit() else last] = value
    return document


def test_the_example_file_loads() -> None:
    config = load_config(EXAMPLE, env={"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"})
    assert config.sink == SinkConfig(
        bucket="logs",
        endpoint_url="http://127.0.0.1:9000",
        region="us-east-1",
        access_key_id="AKID",
        secret_access_key="secret",
        addressing="path",
    )
    [app] = config.inputs
    assert (app.index, app.name, app.label, app.paths) == (0, "app", "app", ("/var/log/app/*.log",))
    assert app.exclude == DEFAULT_EXCLUDES and str(app.key) == "{host}/{path}"
    assert (app.read_from, app.compression) == ("beginning", "none")
    assert app.roll == RollConfig(max_bytes=1 * GiB, max_appends=10000, every="day")
    assert config.batch == BatchConfig(max_bytes=1 * MiB, max_wait=0.2)
    assert config.state_dir == Path("/var/lib/tailbucket")
    assert config.http == HttpConfig(("127.0.0.1", 9101))
    assert config.log == LogConfig("auto", "info")
    assert (config.watch, config.poll_interval, config.rescan_interval) == ("auto", 1.0, 10.0)
    assert (config.partial_line_timeout, config.shutdown_timeout) == (5.0, 10.0)
    assert (config.max_in_flight, config.max_read_ahead, config.host) == (4, 64 * MiB, None)


def test_the_example_without_credentials_leaves_them_to_the_sink() -> None:
    config = load_config(EXAMPLE, env={})
    assert (config.sink.access_key_id, config.sink.secret_access_key) == (None, None)


def test_minimal_config_gets_the_defaults() -> None:
    config = parse_config(MINIMAL, env={})
    [spec] = config.inputs
    assert spec.label == "0" and spec.read_from == "beginning" and spec.roll == RollConfig()
    assert config == AgentConfig(sink=SinkConfig(bucket="logs"), inputs=config.inputs)


def test_every_field_can_be_set() -> None:
    document = {
        "sink": {
            "endpoint_url": "https://s3.example.com:8443/",
            "region": "eu-west-3",
            "bucket": "my.logs-1",
            "profile": "ops",
            "addressing": "virtual",
            "append_objects": "off",
        },
        "inputs": [
            {
                "name": "web",
                "paths": ["/srv/**/access.log", "/var/log/../log/x.log"],
                "exclude": [],
                "key": "logs/{input}/{date:%Y-%m-%d}/{host}/{stem}",
                "read_from": "end",
                "roll": {"max_bytes": "10MB", "max_appends": 500, "every": "hour"},
                "compression": "gzip",
            }
        ],
        "batch": {"max_bytes": "256 KiB", "max_wait": "1m30s"},
        "state_dir": "/tmp/tb/",
        "http": {"listen": "[::1]:0"},
        "log": {"format": "json", "level": "debug"},
        "host": "web-1",
        "watch": "poll",
        "poll_interval": "250ms",
        "rescan_interval": 60,
        "partial_line_timeout": 0,
        "shutdown_timeout": "2s",
        "max_in_flight": "16",
        "max_read_ahead": "1GiB",
    }
    config = parse_config(document, env={})
    assert config.sink == SinkConfig("my.logs-1", "https://s3.example.com:8443", "eu-west-3", "ops", None, None, "virtual",
                                     "off")
    [web] = config.inputs
    assert web.paths == ("/srv/**/access.log", "/var/log/x.log")  # normalised
    assert web.exclude == () and web.read_from == "end" and web.compression == "gzip"
    assert web.roll == RollConfig(10_000_000, 500, "hour")
    assert config.batch == BatchConfig(256 * 1024, 90.0)
    assert config.state_dir == Path("/tmp/tb") and config.http.listen == ("::1", 0)
    assert config.log == LogConfig("json", "debug") and config.host == "web-1" and config.watch == "poll"
    assert (config.poll_interval, config.rescan_interval, config.partial_line_timeout) == (0.25, 60.0, 0.0)
    assert (config.shutdown_timeout, config.max_in_flight, config.max_read_ahead) == (2.0, 16, GiB)


def test_environment_expansion() -> None:
    document = with_("batch", {"max_bytes": "${SIZE}", "max_wait": "${WAIT:-50ms}"})
    document["sink"]["bucket"] = "${PREFIX}-logs"
    document["sink"]["region"] = "${EMPTY:-eu-north-1}"  # :- also replaces an empty value
    document["sink"]["profile"] = "cost$$center"
    config = parse_config(document, env={"SIZE": "2MiB", "PREFIX": "acme", "EMPTY": ""})
    assert config.batch == BatchConfig(2 * MiB, 0.05)
    assert (config.sink.bucket, config.sink.region, config.sink.profile) == ("acme-logs", "eu-north-1", "cost$center")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (None, "the config is empty"),
        ([], "expected a mapping, got a list"),
        ({"inputs": MINIMAL["inputs"]}, "sink: is required"),
        ({"sink": {"bucket": "logs"}}, "inputs: is required"),
        (with_("inputs", []), "inputs: needs at least one input"),
        (with_("extra", 1), "extra: unknown key (known here: "),
        (with_("sink.bukket", "x"), "sink.bukket: unknown key"),
        (with_("inputs.0.rolll", {}), "inputs[0].rolll: unknown key"),
        (with_("inputs.0.roll.max_bytes", "1 GiBB"), 'inputs[0].roll.max_bytes: "1 GiBB" is not a size'),
        (with_("inputs.0.roll.max_bytes", 0), "inputs[0].roll.max_bytes: 0 must be at least 1 bytes"),
        (with_("inputs.0.roll.max_appends", 2.5), "inputs[0].roll.max_appends: 2.5 is not a whole number"),
        (with_("inputs.0.roll.every", "week"), "inputs[0].roll.every: 'week' is not one of: hour, day"),
        (with_("inputs.0.key", "{host}/{nope}"), "inputs[0].key: unknown field {nope}"),
        (with_("inputs.0.key", "{host}"), "inputs[0].key: '{host}' needs {path}, {name} or {stem}"),
        (with_("inputs.0.key", "../{path}"), "inputs[0].key: '../{path}' renders unsafe keys"),
        (with_("inputs.0.paths", ["var/log/*.log"]), "inputs[0].paths[0]: 'var/log/*.log' must be an absolute path"),
        (with_("inputs.0.paths", []), "inputs[0].paths: needs at least one path"),
        (with_("inputs.0.paths", "/var/log/*.log"), "inputs[0].paths: expected a list, got a string"),
        (with_("inputs.0.exclude", [1]), "inputs[0].exclude[0]: expected a string, got int"),
        (with_("inputs.0.read_from", "start"), "inputs[0].read_from: 'start' is not one of: beginning, end"),
        (with_("inputs.0.compression", "zstd"), "inputs[0].compression: 'zstd' is not one of: none, gzip"),
        (with_("inputs.0.name", "a/b"), "inputs[0].name: 'a/b' is not a name"),
        ({**MINIMAL, "inputs": [{"name": "x", "paths": ["/a"]}, {"name": "x", "paths": ["/b"]}]},
         "inputs[1].name: 'x' is already the name of inputs[0]"),
        (with_("sink.bucket", "Logs_Bucket"), "sink.bucket: 'Logs_Bucket' is not a valid bucket name"),
        (with_("sink.endpoint_url", "ftp://x"), "sink.endpoint_url: 'ftp://x' is not an http:// or https:// endpoint URL"),
        (with_("sink.addressing", "dns"), "sink.addressing: 'dns' is not one of: path, virtual"),
        (with_("sink.append_objects", "on"), "sink.append_objects: 'on' is not one of: auto, off"),
        (with_("sink.access_key_id", "AKID"), "sink.secret_access_key: is required when the other half"),
        (with_("sink.region", 5), "sink.region: expected a string, got int"),
        (with_("batch.max_bytes", "6GiB"), "batch.max_bytes: '6GiB' must be at least 1 and at most 5368709120 bytes"),
        (with_("batch.max_wait", "soon"), 'batch.max_wait: "soon" is not a duration'),
        (with_("batch.max_wait", "-1s"), 'batch.max_wait: "-1s" is not a duration'),
        (with_("poll_interval", 0), "poll_interval: 0 must be longer than zero"),
        (with_("max_in_flight", 0), "max_in_flight: 0 must be at least 1"),
        (with_("max_in_flight", True), "max_in_flight: True is not a whole number"),
        (with_("max_read_ahead", "512KiB"), "max_read_ahead: 524288 bytes is less than batch.max_bytes (1048576)"),
        (with_("watch", "fanotify"), "watch: 'fanotify' is not one of: auto, inotify, poll"),
        (with_("state_dir", "state"), "state_dir: 'state' must be an absolute path"),
        (with_("http.listen", "9101"), "http.listen: '9101' is not HOST:PORT"),
        (with_("http.listen", "localhost:99999"), "http.listen: 'localhost:99999' is not HOST:PORT"),
        (with_("log.level", "trace"), "log.level: 'trace' is not one of: debug, info, warning, error"),
        (with_("log", "json"), "log: expected a mapping, got a string"),
        (with_("host", "a/b"), "host: 'a/b' is not a host name"),
        (with_("sink.profile", "${UNSET}"), "sink.profile: environment variable UNSET is not set"),
        (with_("sink.profile", "${bad-name}"), "sink.profile: bad variable reference"),
        (with_("sink.profile", "${UNCLOSED"), "sink.profile: bad variable reference"),
    ],
)
def test_refusals_name_the_yaml_path(document: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert str(caught.value).startswith(message), str(caught.value)


def test_error_carries_its_path_separately() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(with_("inputs.0.roll.max_bytes", "1 GiBB"), env={})
    assert caught.value.path == "inputs[0].roll.max_bytes"


def test_yaml_problems_are_config_errors(tmp_path: Path) -> None:
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text("sink: {bucket: logs}\nsink: {bucket: other}\n")
    with pytest.raises(ConfigError, match="duplicate key 'sink'"):
        load_config(duplicate, env={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("sink: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(broken, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", env={})


def test_config_is_frozen() -> None:
    config = parse_config(MINIMAL, env={})
    with pytest.raises(AttributeError):
        config.batch.max_bytes = 1  # type: ignore[misc]
