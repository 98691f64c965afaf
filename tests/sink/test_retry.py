"""Retry policy: which errors retry, full-jitter delays, budgets on virtual time."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from sink.errors import (
    AuthError,
    ConfigError,
    ConflictError,
    NotFoundError,
    RemoteError,
    ServerError,
    ThrottledError,
    TooManyAppends,
    TransportError,
)
from sink.retry import RetryPolicy, call_with_retry, is_retriable


def remote(cls: type[RemoteError], code: str, status: int) -> RemoteError:
    return cls("msg", code=code, status=status)


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (TransportError("reset"), True),
        (remote(ThrottledError, "SlowDown", 503), True),
        (remote(ServerError, "InternalError", 500), True),
        (remote(RemoteError, "WeirdGateway", 502), True),
        (remote(AuthError, "SignatureDoesNotMatch", 403), False),
        (remote(NotFoundError, "NoSuchBucket", 404), False),
        (remote(RemoteError, "BadDigest", 400), False),
        (ConflictError("x", bucket="b", key="k", expected=1, actual=2), False),
        (TooManyAppends("full", bucket="b", key="k"), False),
        (ConfigError("bad"), False),
        (ValueError("not ours"), False),
    ],
)
def test_retriable_versus_fatal(exc: Exception, retriable: bool) -> None:
    assert is_retriable(exc) is retriable


def test_full_jitter_delay_is_uniform_below_the_capped_exponential() -> None:
    policy = RetryPolicy(base=0.5, cap=4.0, max_attempts=10)
    assert [policy.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(2, lambda: 0.25) == 0.5
    rng = random.Random(7)
    draws = [policy.delay(3, rng.random) for _ in range(2000)]
    assert all(0 <= d < 4.0 for d in draws)
    assert 1.8 < sum(draws) / len(draws) < 2.2  # uniform on [0, 4): mean 2
    assert policy.ceiling(10_000) == 4.0  # no overflow on absurd counts


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=None, max_elapsed=None)
    with pytest.raises(ConfigError):
        RetryPolicy(base=2.0, cap=1.0)
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)


def test_backoff_stops_after_max_attempts() -> None:
    backoff = RetryPolicy(base=1.0, cap=100.0, max_attempts=3).start(0.0, lambda: 1.0)
    assert backoff.next_delay(0.0) == 1.0
    assert backoff.next_delay(1.0) == 2.0
    assert backoff.next_delay(3.0) is None


def test_backoff_trims_the_last_delay_to_max_elapsed() -> None:
    backoff = RetryPolicy(base=4.0, cap=100.0, max_attempts=None, max_elapsed=10.0).start(0.0, lambda: 1.0)
    assert backoff.next_delay(0.0) == 4.0
    assert backoff.next_delay(4.0) == 6.0  # 8 would overshoot: ends exactly at the limit
    assert backoff.next_delay(10.0) is None


class Flaky:
    """Fails with ``error`` the first ``failures`` times, recording when it was called."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise self.error
        return "done"


async def test_call_with_retry_waits_exact_virtual_times(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    flaky = Flaky(3, TransportError("reset"))
    policy = RetryPolicy(base=1.0, cap=3.0, max_attempts=5)
    assert await call_with_retry(flaky, policy, rand=lambda: 1.0) == "done"
    assert [t - start for t in flaky.calls] == [0.0, 1.0, 3.0, 6.0]  # waits 1, 2, then 3 (capped)


async def test_call_with_retry_gives_up_with_the_last_error(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    flaky = Flaky(10, TransportError("still down"))
    with pytest.raises(TransportError, match="still down"):
        await call_with_retry(flaky, RetryPolicy(base=1.0, cap=8.0, max_attempts=3), rand=lambda: 0.5)
    assert [t - start for t in flaky.calls] == [0.0, 0.5, 1.5]


async def test_call_with_retry_does_not_retry_fatal_errors(autojump_clock: trio.testing.MockClock) -> None:
    flaky = Flaky(1, remote(AuthError, "AccessDenied", 403))
    with pytest.raises(AuthError):
        await call_with_retry(flaky, RetryPolicy())
    assert len(flaky.calls) == 1


async def test_call_with_retry_respects_max_elapsed_on_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    flaky = Flaky(100, remote(ThrottledError, "SlowDown", 503))
    with pytest.raises(ThrottledError):
        await call_with_retry(flaky, RetryPolicy(base=2.0, cap=2.0, max_attempts=None, max_elapsed=5.0), rand=lambda: 1.0)
    assert [t - start for t in flaky.calls] == [0.0, 2.0, 4.0, 5.0]
