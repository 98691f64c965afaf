"""Sizes and durations as written in config."""

from __future__ import annotations

import pytest

from agent.units import GiB, KiB, MiB, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [(0, 0), (1024, 1024), ("1GiB", GiB), ("1 MiB", MiB), ("1.5KiB", 1536), ("10MB", 10_000_000), ("2kB", 2000), ("7", 7), ("3B", 3)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["1 GiBB", "1.5B", "-1", "GiB", "", "1 gib", "1e3", True, 1.5, "1  KiB", None, -5])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError, match="is not"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(5, 5.0), (0.25, 0.25), ("2", 2.0), ("200ms", 0.2), ("5s", 5.0), ("1m30s", 90.0), ("1h", 3600.0), ("1d", 86400.0), ("500us", 0.0005), ("1.5s", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "5x", "s", "", "-1s", "1m 30s", True, -1, float("nan"), float("inf"), None])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_unit_constants() -> None:
    assert (KiB, MiB, GiB) == (1024, 1024**2, 1024**3)
