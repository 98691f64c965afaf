"""Every file in config/ loads and validates, with the loader of the program it is for."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[1] / "config"
ENV = {
    "TAILBUCKET_ACCESS_KEY": "root", "TAILBUCKET_SECRET_KEY": "root-secret", "AGENT_WEB1_SECRET": "s1",
    "ONCALL_SECRET": "s2", "TAILBUCKET_BUCKET": "logs", "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "x",
}


@pytest.mark.parametrize("path", sorted(CONFIG.glob("*.yaml")), ids=lambda p: p.name)
def test_example_config_loads(path):
    if path.name.startswith("server"):
        from server.config import load_config

        config = load_config(path, ENV)
        assert config.listen[1] > 0
    else:
        from agent.config import load_config

        config = load_config(path, ENV)
        assert config.inputs and config.sink.bucket


def test_every_example_is_covered():
    assert {p.suffix for p in CONFIG.iterdir()} == {".yaml"}
