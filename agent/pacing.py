"""When the shipper may append, and to which object: pure rules, no I/O, no trio.

Pacing.  Every append costs about the same CPU whatever its size (half a
millisecond in the S3 client, two for the whole agent with a thousand busy
streams), so the append *rate* is what the agent budgets, not the byte rate.  A
``TokenBucket`` grants appends at ``rate`` per second (bursts up to ``burst``).
Streams wait their turn round-robin; while a stream waits, its new bytes pile
up behind it and go out in the same append.  So batching adapts to the number
of active streams by itself: one busy stream appends as soon as its previous
append is answered (up to ``rate`` times a second), ten streams each get a
tenth of the rate, a thousand each wait about ``1000 / rate`` seconds and
send a thousand times fewer requests than they would at a fixed age limit.
A full batch (``batch.max_bytes``) never waits for its age either, and a
stream that is behind (a full append's worth waiting) takes no token: waiting
would not make its append any bigger, so it appends as fast as the server
answers and its CPU follows its bytes.

Roll-over.  A stream's object is ``base`` (the rendered key template), then
``base.part1``, ``base.part2``...  when a ``roll`` limit is reached; when the
rendered template itself changes (``{date}`` at midnight, or a new template
after a config change) the stream moves to the new base.  ``.partN`` is chosen
over ``.N`` so a rolled object never takes the key of a rotated log file
(``app.log.1``) that a glob might also ship.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from agent.config import RollConfig

_INDEX = re.compile(r"[1-9][0-9]*")
TOKEN_SLACK = 1e-9  # a token this much short counts as whole (float sums; see ``TokenBucket.ready_at``)


@dataclass
class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; time is passed in."""

    rate: float
    burst: float
    tokens: float = math.nan  # starts full
    stamp: float = -math.inf

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got {self.rate}, {self.burst}")
        if math.isnan(self.tokens):
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            elapsed = now - self.stamp if self.stamp != -math.inf else math.inf
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self.tokens >= 1 - TOKEN_SLACK:
            self.tokens -= 1
            return True
        return False

    def ready_at(self, now: float, count: int = 1) -> float:
        """When ``count`` tokens (at most ``burst``) will be there (``now`` if they are).

        Refills are sums of floats: at the time computed here the bucket may hold
        0.9999999999999998 tokens, and that time plus the shortfall's share may
        round back to the same float.  So ``take`` accepts a token short by
        TOKEN_SLACK, and the time returned is always later than ``now``: a
        dispatcher waiting for it cannot spin at one instant (it did, under a
        MockClock, which does not move while tasks run)."""
        self._refill(now)
        wanted = min(max(count, 1), self.burst)
        if self.tokens >= wanted - TOKEN_SLACK:
            return now
        return max(now + (wanted - self.tokens) / self.rate, math.nextafter(now, math.inf))


def turn_interval(active_streams: int, rate: float) -> float:
    """Seconds between two appends of one stream when ``active_streams`` share ``rate``."""
    return max(active_streams, 1) / rate


# -- roll-over ---------------------------------------------------------------------


def part_key(base: str, index: int) -> str:
    """The key of a stream's ``index``-th object under ``base`` (0: ``base`` itself)."""
    return base if index == 0 else f"{base}.part{index}"


def index_under(key: str, base: str) -> int | None:
    """``n`` if ``key`` is ``part_key(base, n)``; ``None`` if it is not under ``base`` at all.

    Asked of a known base rather than parsed from the key alone, so a log
    file that is itself named ``x.part3`` is not mistaken for a roll-over.
    """
    if key == base:
        return 0
    prefix = base + ".part"
    if key.startswith(prefix) and _INDEX.fullmatch(key[len(prefix) :]):
        return int(key[len(prefix) :])
    return None


def period_of(now: datetime, every: Literal["hour", "day"] | None) -> str | None:
    """The UTC calendar period ``now`` falls in (``None``: no time-based roll)."""
    if every is None:
        return None
    return now.astimezone(timezone.utc).strftime("%Y-%m-%dT%H" if every == "hour" else "%Y-%m-%d")


@dataclass(frozen=True)
class ObjectSoFar:
    """What is known about a stream's current object when the next body is ready."""

    key: str
    length: int  # bytes in the object
    appends: int  # appends this agent made to it since it started (or restarted)
    period: str | None  # the calendar period it was started in


def roll_target(roll: RollConfig, current: ObjectSoFar, base_now: str, period_now: str | None, body: int) -> tuple[str, str] | None:
    """``(new_key, reason)`` if the next ``body`` bytes must go to another object, else ``None``.

    An empty object takes any first body (a body larger than ``max_bytes``
    is never split: the byte exactness of the copy comes first).
    """
    index = index_under(current.key, base_now)
    if index is None:
        return base_now, "key_changed"
    if current.length == 0 and current.appends == 0:
        return None
    if roll.max_bytes is not None and current.length + body > roll.max_bytes:
        return part_key(base_now, index + 1), "max_bytes"
    if roll.max_appends is not None and current.appends >= roll.max_appends:
        return part_key(base_now, index + 1), "max_appends"
    if period_now is not None and current.period is not None and period_now != current.period:
        return part_key(base_now, index + 1), "every"
    return None
