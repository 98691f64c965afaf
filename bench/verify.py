"""Exactness: every object must equal its log files, byte for byte, or the benchmark's figures mean nothing."""

from __future__ import annotations

from pathlib import Path

from bench.raws3 import RawS3


class Exactness(AssertionError):
    """An object is not an exact copy of its log."""


def concatenated(paths: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in paths)


def verify(s3: RawS3, bucket: str, expected: dict[str, list[Path]]) -> int:
    """Each key's object must equal its files concatenated (oldest first); the bytes compared."""
    total = 0
    for key, paths in expected.items():
        want = concatenated(paths)
        got = s3.get(bucket, key) or b""
        if got != want:
            where = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise Exactness(f"{key}: object {len(got)} bytes, log {len(want)} bytes, first difference at byte {where}")
        total += len(want)
    return total


def sizes_reached(s3: RawS3, bucket: str, prefix: str, sizes: dict[str, int]) -> bool:
    """Whether every key in ``sizes`` (all under ``prefix``) is at least that long (one request)."""
    if len(sizes) == 1:
        (key, size), = sizes.items()
        return (s3.head_length(bucket, key) or 0) >= size
    seen = s3.list_sizes(bucket, prefix)
    return all(seen.get(key, 0) >= size for key, size in sizes.items())
