"""Key templates: fields, dates, confinement to the prefix, and bad templates."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from agent.errors import KeyRenderError, KeyTemplateError
from agent.router import MAX_KEY_BYTES, KeyFields, check_key, parse_template

NOW = datetime(2024, 3, 5, 23, 30, tzinfo=timezone.utc)


def fields(path: str = "/var/log/app/web.log", host: str = "web-1", input: str = "0") -> KeyFields:
    return KeyFields(host=host, path=path, input=input, now=NOW)


@pytest.mark.parametrize(
    ("template", "key"),
    [
        ("{host}/{path}", "web-1/var/log/app/web.log"),
        ("logs/{input}/{name}", "logs/0/web.log"),
        ("{stem}.txt", "web.txt"),
        ("archive/{date:%Y/%m/%d}/{host}/{name}", "archive/2024/03/05/web-1/web.log"),
        ("{date}/{name}", "2024/03/05/web.log"),
        ("h={host}/t={date:%Y%m%dT%H}/{path}", "h=web-1/t=20240305T23/var/log/app/web.log"),
    ],
)
def test_templates_render(template: str, key: str) -> None:
    assert parse_template(template).render(fields()) == key


def test_date_is_utc_whatever_the_zone_of_now() -> None:
    paris = datetime(2024, 3, 6, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    template = parse_template("{date:%Y-%m-%d}/{name}")
    assert template.uses_date
    assert template.render(KeyFields("h", "/a.log", "0", paris)) == "2024-03-05/a.log"
    assert not parse_template("{path}").uses_date


def test_stem_and_name_edge_cases() -> None:
    template = parse_template("{stem}/{name}")
    assert template.render(fields("/var/log/app.2024.log")) == "app.2024/app.2024.log"
    assert template.render(fields("/var/log/.hidden")) == ".hidden/.hidden"
    assert template.render(fields("/var/log/noext")) == "noext/noext"


def test_prefix_is_the_literal_start() -> None:
    assert parse_template("logs/{host}/{path}").prefix == "logs/"
    assert parse_template("{host}/{path}").prefix == ""


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (fields(host=".."), "'..' segment"),
        (fields(host="."), "'..' segment"),
        (fields(host=""), "empty"),
        (fields(path="/var/log/line\nbreak.log"), "control character"),
        (fields(path="/var/log/" + "x" * MAX_KEY_BYTES), "longer than 1024 bytes"),
        (fields(path="/var/log/bad-\udcff.log"), "not valid UTF-8"),
    ],
)
def test_unsafe_rendered_keys_are_refused(values: KeyFields, reason: str) -> None:
    with pytest.raises(KeyRenderError, match=reason):
        parse_template("logs/{host}/{path}").render(values)


def test_check_key_confines_to_prefix() -> None:
    check_key("logs/a/b", "logs/")
    with pytest.raises(KeyRenderError, match="not under its prefix"):
        check_key("other/a", "logs/")
    with pytest.raises(KeyRenderError, match="'..' segment"):
        check_key("logs/../etc/passwd", "logs/")
    multibyte = "é" * (MAX_KEY_BYTES // 2)  # 1024 bytes of UTF-8: exactly the limit
    check_key(multibyte)
    with pytest.raises(KeyRenderError):
        check_key(multibyte + "x")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("", "empty"),
        ("{host}", "needs {path}, {name} or {stem}"),
        ("{nope}/{path}", "unknown field {nope}"),
        ("{Path}", "unknown field {Path}"),
        ("{path", "unclosed '{'"),
        ("{a{path}}", "unclosed '{'"),
        ("a}/{path}", "unmatched '}'"),
        ("{host:x}/{path}", "{host} takes no format"),
        ("{date:}/{path}", "needs a format"),
        ("{date:%b}/{path}", "unsupported date directive %b"),
        ("{date:%Y%}/{path}", "unsupported date directive %"),
        ("/{path}", "renders unsafe keys"),
        ("logs//{path}", "renders unsafe keys"),
        ("../{path}", "renders unsafe keys"),
        ("{path}/", "renders unsafe keys"),
        ("tab\there/{path}", "renders unsafe keys"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(KeyTemplateError, match=re.escape(message)):
        parse_template(template)
