"""How many appends a second the agent can afford: a CPU budget over what an append costs now.

Every append costs about the same CPU whatever its size, so the shipper's
token rate sets the agent's CPU when many streams wait for turns, and each
of N waiting streams gets a turn every N / rate seconds: the rate is what
freshness is bought with.  A fixed rate is sized for one cost per append; the
cost changes with the machine, the sink and the code.  ``AppendRate`` is the
pure rule (no trio, no clock): fed the process's CPU seconds and appends of
each window, it moves the rate toward ``budget`` cores' worth of appends,
never below ``floor`` (the rate the agent always had) nor above ``ceiling``.
It only raises the rate after a window in which turns waited for tokens:
when the rate did not hold anything back, a higher one would buy nothing and
an idle agent's cost per append (its fixed costs over few appends) says
nothing about a busy one's.  A raise goes straight to what the window
affords (at most doubling the rate): an append's cost falls as the rate
rises (more appends share each request and write), so halfway steps took
15 s to reach the rate a thousand streams settle at, and their lines waited
meanwhile.  A cut goes halfway, so one noisy window cannot halve it.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_APPENDS = 20  # a window with fewer appends says too little about their cost
SMOOTHING = 0.5  # weight of the newest window when lowering (windows are noisy on a shared machine)
MAX_STEP_UP = 4.0  # a raise goes all the way to what the window affords, but at most to four times the rate


@dataclass
class AppendRate:
    """The append rate for a CPU budget; ``update`` once per window."""

    budget: float  # cores the agent may spend (everything it does, not only appends)
    floor: float  # appends a second, at least
    ceiling: float  # and at most
    rate: float = 0.0  # now (starts at ``floor``)

    def __post_init__(self) -> None:
        if not 0 < self.floor <= self.ceiling or self.budget <= 0:
            raise ValueError(f"need 0 < floor <= ceiling and budget > 0, got {self.floor}, {self.ceiling}, {self.budget}")
        self.rate = self.rate or self.floor

    def update(self, cpu_seconds: float, appends: int, held_back: bool) -> float:
        """The rate after a window in which the process used ``cpu_seconds`` and made ``appends``;
        ``held_back``: turns waited for tokens during it."""
        if appends < MIN_APPENDS:
            return self.rate
        affordable = self.budget / (cpu_seconds / appends) if cpu_seconds > 0 else self.ceiling
        if affordable > self.rate:
            if not held_back:
                return self.rate
            target = min(affordable, MAX_STEP_UP * self.rate)
        else:
            target = self.rate + SMOOTHING * (affordable - self.rate)
        self.rate = min(self.ceiling, max(self.floor, target))
        return self.rate
