"""Optional gzip framing: every append is one complete gzip member.

A gzip file may hold several members back to back, and a decompressor
outputs their concatenation (RFC 1952 section 2.2; ``gzip -dc`` and Python's
``gzip.decompress`` both do). So if each append is a whole member, the object
is a valid ``.gz`` at every moment, and decompressing it gives exactly the
concatenated inputs. The cost: remote offsets count compressed bytes, and
small appends compress poorly (each member carries ~20 bytes of framing).

``mtime=0`` keeps the output a pure function of the input, so retrying the
same data produces the same bytes and the same length, which is what
reconciling an uncertain append compares.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from typing import Protocol


class Codec(Protocol):
    """Turns one append's data into the bytes sent; must be deterministic."""

    name: str

    def encode(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Identity:
    """Send the data as it is."""

    name: str = "identity"

    def encode(self, data: bytes) -> bytes:
        return data


@dataclass(frozen=True)
class GzipMembers:
    """Send each append as one gzip member (level 1..9; 6 is zlib's default)."""

    level: int = 6
    name: str = "gzip"

    def __post_init__(self) -> None:
        if not 1 <= self.level <= 9:
            raise ValueError(f"gzip level must be 1..9, got {self.level}")

    def encode(self, data: bytes) -> bytes:
        # An empty input still makes a 20-byte member; send nothing instead.
        if not data:
            return b""
        return gzip.compress(data, compresslevel=self.level, mtime=0)
