"""Object-key templates: which S3 key a log file's bytes go to.

A template such as ``logs/{host}/{path}`` is parsed once at config load
(``parse_template``) and rendered per file (``KeyTemplate.render``).  Fields:

    {host}   the agent's host name        {input}  the input's name, or its index
    {path}   absolute path without "/"    {name}   file name   {stem}  name without its last suffix
    {date:%Y/%m/%d}  the UTC date (digits-only strftime directives; ``{date}`` is %Y/%m/%d)

Rendered keys are confined to the template's static prefix (Vector does the same
for its sinks): no ``.``/``..`` or empty segments, no leading ``/``, no control
characters, at most 1024 UTF-8 bytes (the S3 key limit).  Tools that map keys
onto paths (``aws s3 sync``) and servers that normalise them would otherwise let
one file's key land outside, or on top of, another's.  Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath

from agent.errors import KeyRenderError, KeyTemplateError

MAX_KEY_BYTES = 1024  # S3 object keys are at most 1024 bytes of UTF-8
DEFAULT_DATE_FORMAT = "%Y/%m/%d"
FIELDS = frozenset({"host", "path", "name", "stem", "input", "date"})
FILE_FIELDS = frozenset({"path", "name", "stem"})
# Directives that render as digits only, the same in every locale.
DATE_DIRECTIVES = frozenset("YymdHMSjUWGVuw%")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class KeyFields:
    """The values one file contributes to its key."""

    host: str
    path: str  # absolute, normalised
    input: str  # the input's name, or its index as text
    now: datetime  # timezone-aware; rendered in UTC


@dataclass(frozen=True)
class _Field:
    name: str
    date_format: str = ""


@dataclass(frozen=True, repr=False)
class KeyTemplate:
    """A parsed template.  ``prefix`` is the literal text before the first field."""

    source: str
    parts: tuple[str | _Field, ...]

    def __repr__(self) -> str:
        return f"KeyTemplate({self.source!r})"

    @property
    def prefix(self) -> str:
        first = self.parts[0] if self.parts else ""
        return first if isinstance(first, str) else ""

    @property
    def uses_date(self) -> bool:
        """True when the key changes with the date (the shipper rolls to the new key)."""
        return any(isinstance(p, _Field) and p.name == "date" for p in self.parts)

    def render(self, fields: KeyFields) -> str:
        """The key for one file; ``KeyRenderError`` if it would be unsafe."""
        key = "".join(p if isinstance(p, str) else _value(p, fields) for p in self.parts)
        check_key(key, self.prefix)
        return key

    def __str__(self) -> str:
        return self.source


def parse_template(text: str) -> KeyTemplate:
    """Parse and validate ``text``; ``KeyTemplateError`` says what is wrong."""
    if not text:
        raise KeyTemplateError("the key template is empty")
    parts: list[str | _Field] = []
    literal: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "}":
            raise KeyTemplateError(f"unmatched '}}' at position {position} in {text!r}")
        if char != "{":
            literal.append(char)
            position += 1
            continue
        end = text.find("}", position)
        if end < 0 or "{" in text[position + 1 : end]:
            raise KeyTemplateError(f"unclosed '{{' at position {position} in {text!r}")
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(_parse_field(text[position + 1 : end]))
        position = end + 1
    if literal:
        parts.append("".join(literal))
    template = KeyTemplate(text, tuple(parts))
    if not any(isinstance(p, _Field) and p.name in FILE_FIELDS for p in parts):
        raise KeyTemplateError(f"{text!r} needs {{path}}, {{name}} or {{stem}} so each file gets its own object")
    sample = KeyFields("host", "/var/log/app.log", "0", datetime(2000, 1, 1, tzinfo=timezone.utc))
    try:
        template.render(sample)
    except KeyRenderError as exc:
        raise KeyTemplateError(f"{text!r} renders unsafe keys: {exc}") from None
    return template


def _parse_field(inner: str) -> _Field:
    name, colon, spec = inner.partition(":")
    if name not in FIELDS:
        known = ", ".join("{" + f + "}" for f in sorted(FIELDS))
        raise KeyTemplateError(f"unknown field {{{inner}}} (known: {known})")
    if name != "date":
        if colon:
            raise KeyTemplateError(f"{{{name}}} takes no format")
        return _Field(name)
    date_format = spec if colon else DEFAULT_DATE_FORMAT
    _check_date_format(date_format)
    return _Field(name, date_format)


def _check_date_format(date_format: str) -> None:
    if not date_format:
        raise KeyTemplateError("{date:} needs a format such as %Y/%m/%d")
    index = 0
    while index < len(date_format):
        if date_format[index] == "%":
            directive = date_format[index + 1 : index + 2]
            if directive not in DATE_DIRECTIVES or not directive:
                allowed = " ".join("%" + d for d in sorted(DATE_DIRECTIVES))
                raise KeyTemplateError(f"unsupported date directive %{directive} (allowed: {allowed})")
            index += 2
        else:
            index += 1


def _value(part: _Field, fields: KeyFields) -> str:
    if part.name == "host":
        return fields.host
    if part.name == "path":
        return fields.path.lstrip("/")
    if part.name == "name":
        return PurePosixPath(fields.path).name
    if part.name == "stem":
        return PurePosixPath(fields.path).stem
    if part.name == "input":
        return fields.input
    return fields.now.astimezone(timezone.utc).strftime(part.date_format)


def check_key(key: str, prefix: str = "") -> None:
    """Raise ``KeyRenderError`` unless ``key`` is a safe key under ``prefix``."""
    if not key.startswith(prefix):
        raise KeyRenderError(f"key {key!r} is not under its prefix {prefix!r}")
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise KeyRenderError(f"key {key[:64]!r}... is longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL.search(key):
        raise KeyRenderError(f"key {key!r} contains a control character")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise KeyRenderError(f"key {key!r} is not valid UTF-8 (undecodable file name)") from None
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise KeyRenderError(f"key {key!r} has an empty, '.' or '..' segment")
