"""The append rate follows a CPU budget over what an append costs: pure rule, exact numbers."""

from __future__ import annotations

import pytest

from agent.cpu_budget import MIN_APPENDS, AppendRate
from agent.metrics import AgentMetrics


def test_cheap_appends_that_were_held_back_raise_the_rate_to_what_the_budget_affords_at_most_fourfold() -> None:
    pacing = AppendRate(budget=0.4, floor=200, ceiling=4000)
    assert pacing.rate == 200
    # 400 appends for 0.4 CPU seconds: 1 ms each, so 0.4 cores afford 400 a second.
    assert pacing.update(cpu_seconds=0.4, appends=400, held_back=True) == pytest.approx(400)
    # 0.05 ms each: 8,000 a second afforded, but a window raises the rate at most fourfold, then the ceiling.
    assert pacing.update(cpu_seconds=0.02, appends=400, held_back=True) == pytest.approx(1600)
    assert pacing.update(cpu_seconds=0.08, appends=1600, held_back=True) == pytest.approx(4000)


def test_a_rate_that_held_nothing_back_is_not_raised() -> None:
    pacing = AppendRate(budget=0.4, floor=200, ceiling=2000)
    assert pacing.update(cpu_seconds=0.01, appends=100, held_back=False) == 200


def test_dear_appends_lower_the_rate_but_never_below_the_floor() -> None:
    pacing = AppendRate(budget=0.4, floor=200, ceiling=2000, rate=600)
    # 2 ms each: 0.4 cores afford 200 a second.
    assert pacing.update(cpu_seconds=1.0, appends=500, held_back=False) == pytest.approx(400)
    assert pacing.update(cpu_seconds=4.0, appends=500, held_back=True) == pytest.approx(225)  # 8 ms: 50 a second
    assert pacing.update(cpu_seconds=4.0, appends=500, held_back=True) == 200  # halfway would be 137.5: floored


def test_the_ceiling_and_windows_too_small_to_judge() -> None:
    pacing = AppendRate(budget=0.4, floor=200, ceiling=500, rate=450)
    assert pacing.update(cpu_seconds=0.01, appends=1000, held_back=True) == 500  # 40,000 a second afforded
    assert pacing.update(cpu_seconds=10.0, appends=MIN_APPENDS - 1, held_back=True) == 500


def test_the_limits_must_make_sense() -> None:
    with pytest.raises(ValueError):
        AppendRate(budget=0.4, floor=300, ceiling=200)
    with pytest.raises(ValueError):
        AppendRate(budget=0, floor=200, ceiling=300)


def test_appends_made_reads_the_counter() -> None:
    metrics = AgentMetrics()
    assert metrics.appends_made() == 0
    metrics.appends.inc()
    metrics.appends.inc()
    assert metrics.appends_made() == 2
