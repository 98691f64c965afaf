"""Credential, region and endpoint resolution: the AWS precedence matrix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sink.credentials import ResolvedConfig, resolve_config
from sink.errors import ConfigError, CredentialsError

ENV_KEYS = {"AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "envsecret"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n\n"
        "[work]\naws_access_key_id = WORKKEY\naws_secret_access_key = worksecret\naws_session_token = worktoken\n"
    )
    (tmp_path / ".aws" / "config").write_text(
        "[default]\nregion = eu-west-1\n\n"
        "[profile work]\nregion = eu-central-1\nendpoint_url = http://profile-endpoint:9000\n\n"
        "[profile cfgonly]\naws_access_key_id = CFGKEY\naws_secret_access_key = cfgsecret\nregion = ap-south-1\n"
        "services = local\n\n"
        "[services local]\ns3 =\n  endpoint_url = http://services-endpoint:9000\n"
    )
    return tmp_path


def env_for(home: Path, **extra: str) -> dict[str, str]:
    return {"HOME": str(home), **extra}


def test_environment_keys_win_over_the_default_profile(home: Path) -> None:
    cfg = resolve_config(env_for(home, **ENV_KEYS, AWS_SESSION_TOKEN="envtoken"))
    assert (cfg.access_key_id, cfg.secret_access_key, cfg.session_token) == ("ENVKEY", "envsecret", "envtoken")
    assert cfg.source == "environment"
    assert cfg.region == "eu-west-1"  # region still comes from the default profile


def test_default_profile_from_home_files(home: Path) -> None:
    cfg = resolve_config(env_for(home))
    assert cfg == ResolvedConfig("FILEKEY", "filesecret", None, "eu-west-1", None, cfg.source)
    assert "credentials [default]" in cfg.source


def test_aws_profile_selects_sections_in_both_files(home: Path) -> None:
    cfg = resolve_config(env_for(home, AWS_PROFILE="work"))
    assert (cfg.access_key_id, cfg.session_token) == ("WORKKEY", "worktoken")
    assert cfg.region == "eu-central-1"
    assert cfg.endpoint_url == "http://profile-endpoint:9000"


def test_aws_profile_does_not_hide_environment_keys(home: Path) -> None:
    assert resolve_config(env_for(home, AWS_PROFILE="work", **ENV_KEYS)).access_key_id == "ENVKEY"


def test_explicit_profile_skips_environment_keys(home: Path) -> None:
    assert resolve_config(env_for(home, **ENV_KEYS), profile="work").access_key_id == "WORKKEY"


def test_keys_and_services_endpoint_from_the_config_file(home: Path) -> None:
    cfg = resolve_config(env_for(home, AWS_PROFILE="cfgonly"))
    assert (cfg.access_key_id, cfg.region) == ("CFGKEY", "ap-south-1")
    assert cfg.endpoint_url == "http://services-endpoint:9000"


def test_explicit_values_win_over_everything(home: Path) -> None:
    cfg = resolve_config(
        env_for(home, **ENV_KEYS, AWS_REGION="us-west-2", AWS_ENDPOINT_URL_S3="http://env:1"),
        access_key_id="ARGKEY",
        secret_access_key="argsecret",
        region="sa-east-1",
        endpoint_url="http://arg:2",
    )
    assert (cfg.access_key_id, cfg.region, cfg.endpoint_url, cfg.source) == ("ARGKEY", "sa-east-1", "http://arg:2", "explicit")


@pytest.mark.parametrize(
    ("env", "region"),
    [
        ({"AWS_REGION": "r1", "AWS_DEFAULT_REGION": "r2"}, "r1"),
        ({"AWS_DEFAULT_REGION": "r2"}, "r2"),
        ({}, "eu-central-1"),  # the profile's region
    ],
)
def test_region_precedence(home: Path, env: dict[str, str], region: str) -> None:
    assert resolve_config(env_for(home, AWS_PROFILE="work", **env)).region == region


def test_region_defaults_to_us_east_1(tmp_path: Path) -> None:
    assert resolve_config({"HOME": str(tmp_path), **ENV_KEYS}).region == "us-east-1"


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({"AWS_ENDPOINT_URL_S3": "http://s3-only:1", "AWS_ENDPOINT_URL": "http://all:2"}, "http://s3-only:1"),
        ({"AWS_ENDPOINT_URL": "http://all:2"}, "http://all:2"),
        ({}, "http://services-endpoint:9000"),
        ({"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true", "AWS_ENDPOINT_URL": "http://all:2"}, None),
    ],
)
def test_endpoint_precedence(home: Path, env: dict[str, str], endpoint: str | None) -> None:
    assert resolve_config(env_for(home, AWS_PROFILE="cfgonly", **env)).endpoint_url == endpoint


def test_file_locations_from_environment(tmp_path: Path) -> None:
    creds = tmp_path / "elsewhere-creds"
    conf = tmp_path / "elsewhere-conf"
    creds.write_text("[ops]\naws_access_key_id = OPSKEY\naws_secret_access_key = opssecret\n")
    conf.write_text("[profile ops]\nregion = us-west-1\n")
    env = {
        "HOME": str(tmp_path / "nohome"),
        "AWS_SHARED_CREDENTIALS_FILE": str(creds),
        "AWS_CONFIG_FILE": str(conf),
        "AWS_DEFAULT_PROFILE": "ops",
    }
    cfg = resolve_config(env)
    assert (cfg.access_key_id, cfg.region) == ("OPSKEY", "us-west-1")


def test_missing_credentials_name_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        resolve_config({"HOME": str(tmp_path)})


def test_half_a_key_pair_is_an_error_not_a_fallthrough(home: Path) -> None:
    with pytest.raises(CredentialsError, match="incomplete credentials from environment"):
        resolve_config(env_for(home, AWS_ACCESS_KEY_ID="ONLYHALF"))


def test_unknown_profile_is_a_config_error(home: Path) -> None:
    with pytest.raises(ConfigError, match="profile 'nope' not found"):
        resolve_config(env_for(home, AWS_PROFILE="nope"))


def test_unparseable_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "creds"
    bad.write_text("this is not an ini file\n")
    with pytest.raises(ConfigError, match="creds"):
        resolve_config({"HOME": str(tmp_path), "AWS_SHARED_CREDENTIALS_FILE": str(bad)})


def test_repr_hides_secrets(home: Path) -> None:
    text = repr(resolve_config(env_for(home, AWS_PROFILE="work")))
    assert "WORKKEY" in text
    assert "worksecret" not in text and "worktoken" not in text
