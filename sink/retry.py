"""When to try again, and how long to wait first.

The policy is pure: which errors are retriable and the delay before attempt
``n``. ``Backoff`` tracks one operation's attempts against a clock you pass
in, so tests can drive it with exact numbers. ``call_with_retry`` is the thin
trio loop around both.

Delays use "full jitter": a uniform draw from ``[0, min(cap, base * 2**n))``,
which spreads retries of many clients evenly (AWS Architecture Blog,
"Exponential Backoff And Jitter", 2015). The random source is injected.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
import trio

from .errors import (
    AuthError,
    ConfigError,
    ConflictError,
    RemoteError,
    RollOverRequired,
    ServerError,
    ThrottledError,
    TransportError,
)

log = structlog.get_logger()
T = TypeVar("T")
RandomSource = Callable[[], float]
"""Returns a float in [0, 1), like ``random.random``."""

SECONDS = 1.0


def is_retriable(exc: BaseException) -> bool:
    """True for failures that may go away by themselves: no answer at all,
    throttling, and server-side errors. Auth, conflicts, config and other 4xx
    are fatal: repeating the same request gets the same refusal."""
    if isinstance(exc, (TransportError, ThrottledError, ServerError)):
        return True
    if isinstance(exc, (AuthError, ConflictError, ConfigError, RollOverRequired)):
        return False
    if isinstance(exc, RemoteError):
        return exc.status >= 500
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``base``/``cap`` shape the delays, ``max_attempts``
    (total tries, including the first) and ``max_elapsed`` (seconds since the
    first try) bound them. ``None`` means no bound; at least one must be set."""

    base: float = 0.2 * SECONDS
    cap: float = 20 * SECONDS
    max_attempts: int | None = 8
    max_elapsed: float | None = None

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ConfigError(f"retry needs 0 < base <= cap, got base={self.base} cap={self.cap}")
        if self.max_attempts is None and self.max_elapsed is None:
            raise ConfigError("retry needs max_attempts or max_elapsed, or it would never give up")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError(f"retry max_attempts must be >= 1, got {self.max_attempts}")

    def ceiling(self, retry_number: int) -> float:
        """Upper bound of the delay before retry number ``retry_number`` (0-based)."""
        # Cap the exponent so 2**n cannot overflow a float on absurd counts.
        return min(self.cap, self.base * 2 ** min(retry_number, 62))

    def delay(self, retry_number: int, rand: RandomSource) -> float:
        """The full-jitter delay before retry number ``retry_number``."""
        return rand() * self.ceiling(retry_number)

    def start(self, now: float, rand: RandomSource | None = None) -> Backoff:
        """Begin tracking one operation that started at ``now``."""
        return Backoff(self, started_at=now, rand=rand or random.random)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass
class Backoff:
    """One operation's retry state: how many attempts so far, since when."""

    policy: RetryPolicy
    started_at: float
    rand: RandomSource = field(default=random.random)
    attempts: int = 1

    def next_delay(self, now: float) -> float | None:
        """Delay before the next attempt, or None when the budget is spent.

        Counts the attempt. A delay that would end past ``max_elapsed`` is
        shortened to end exactly at the limit, so the last try still happens.
        """
        p = self.policy
        if p.max_attempts is not None and self.attempts >= p.max_attempts:
            return None
        elapsed = now - self.started_at
        if p.max_elapsed is not None and elapsed >= p.max_elapsed:
            return None
        delay = p.delay(self.attempts - 1, self.rand)
        if p.max_elapsed is not None:
            delay = min(delay, p.max_elapsed - elapsed)
        self.attempts += 1
        return delay


async def call_with_retry(
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    rand: RandomSource | None = None,
    retriable: Callable[[BaseException], bool] = is_retriable,
    what: str = "request",
) -> T:
    """Await ``fn()`` until it succeeds, a fatal error, or the budget runs out
    (then the last error propagates unchanged)."""
    backoff = policy.start(trio.current_time(), rand)
    while True:
        try:
            return await fn()
        except Exception as exc:
            if not retriable(exc):
                raise
            delay = backoff.next_delay(trio.current_time())
            if delay is None:
                log.warning("retry_exhausted", what=what, attempts=backoff.attempts, error=str(exc))
                raise
            log.info("retry_scheduled", what=what, attempt=backoff.attempts, delay=round(delay, 3), error=str(exc))
            await trio.sleep(delay)
