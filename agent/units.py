"""Sizes and durations as people write them in config (``1GiB``, ``200ms``, ``1m30s``).

Pure functions; they raise ``ValueError`` with a short reason and the config
loader adds the YAML path.  Binary units (``KiB``) are powers of 1024, decimal
units (``KB``/``kB``) powers of 1000, as in IEC 80000-13.  A bare number is bytes
or seconds.
"""

from __future__ import annotations

import re
from decimal import Decimal

B = 1
KB = 1000
MB = 1000 * KB
GB = 1000 * MB
TB = 1000 * GB
KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

NANOSECONDS = 1e-9
MICROSECONDS = 1e-6
MILLISECONDS = 1e-3
SECONDS = 1.0
MINUTES = 60.0
HOURS = 3600.0
DAYS = 86400.0

SIZE_UNITS: dict[str, int] = {
    "": B, "B": B,
    "kB": KB, "KB": KB, "MB": MB, "GB": GB, "TB": TB,
    "KiB": KiB, "MiB": MiB, "GiB": GiB, "TiB": TiB,
}
DURATION_UNITS: dict[str, float] = {
    "ns": NANOSECONDS, "us": MICROSECONDS, "µs": MICROSECONDS, "ms": MILLISECONDS,
    "s": SECONDS, "m": MINUTES, "h": HOURS, "d": DAYS,
}

_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([A-Za-z]*)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?) ?(ns|us|µs|ms|s|m|h|d)")


def parse_size(value: object) -> int:
    """Bytes from ``1048576``, ``"1MiB"``, ``"1 MiB"``, ``"1.5KiB"`` or ``"10MB"``.

    Refuses negatives, fractions of a byte, unknown units and booleans (YAML's
    ``yes`` is not a size).
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a size (negative)")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size")
    match = _SIZE.fullmatch(value.strip())
    if match is None or match.group(2) not in SIZE_UNITS:
        raise ValueError(f'"{value}" is not a size (use e.g. 512KiB, 1MiB, 10MB)')
    number = Decimal(match.group(1)) * SIZE_UNITS[match.group(2)]
    if number != number.to_integral_value():
        raise ValueError(f'"{value}" is not a whole number of bytes')
    return int(number)


def parse_duration(value: object) -> float:
    """Seconds from ``5``, ``0.2``, ``"200ms"``, ``"5s"`` or ``"1m30s"``.

    Compound values add up their parts, each with a unit; a bare number (YAML
    int or float, or a digits-only string) is seconds.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value == float("inf"):
            raise ValueError(f"{value!r} is not a duration")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    position, total = 0, Decimal(0)
    while position < len(text) or position == 0:
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(f'"{value}" is not a duration (use e.g. 200ms, 5s, 1m30s)')
        total += Decimal(match.group(1)) * Decimal(repr(DURATION_UNITS[match.group(2)]))
        position = match.end()
    return float(total)
