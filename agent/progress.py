"""tail-to-bucket's progress line: bytes, rate and ETA, redrawn in place on a terminal.

A pure part (``human_bytes``, ``human_duration``, ``render``, ``RateMeter``:
numbers in, text out, time passed in) and one small painter
(``ProgressBar``) that writes ``\\r`` + the line at most every ``interval``
seconds.  No dependency: one line of text does not need a library, and the
painter must never slow the upload (it is throttled, and does nothing at all
when the stream is not a terminal).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    """``1536`` → ``1.5 KiB``: binary units, three significant digits."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    """``75`` → ``1:15``, ``3725`` → ``1:02:05``; unknown (inf/nan) → ``--:--``."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    hours, rest = divmod(s, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def render(done: int, total: int | None, rate: float, *, width: int = 24) -> str:
    """One progress line.  ``total`` None (following a growing file): no bar, no ETA."""
    speed = f"{human_bytes(rate)}/s"
    if total is None:
        return f"{human_bytes(done)} shipped  {speed}"
    fraction = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = int(fraction * width)
    bar = "#" * filled + "-" * (width - filled)
    eta = (total - done) / rate if rate > 0 else float("inf")
    return (
        f"[{bar}] {fraction * 100:5.1f}%  {human_bytes(done)} / {human_bytes(total)}  "
        f"{speed}  ETA {human_duration(eta if done < total else 0.0)}"
    )


@dataclass
class RateMeter:
    """Bytes per second over the last ``window`` seconds (a steadier figure than one sample)."""

    window: float = 3.0
    _samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, done: int) -> float:
        """Record that ``done`` bytes were complete at ``now``; return the current rate."""
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        first_time, first_done = self._samples[0]
        elapsed = now - first_time
        return (done - first_done) / elapsed if elapsed > 0 else 0.0


class ProgressBar:
    """Redraws ``render(...)`` on ``stream`` at most every ``interval`` seconds, if enabled."""

    def __init__(
        self,
        stream: TextIO,
        total: int | None,
        *,
        enabled: bool,
        start: int = 0,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.total = total
        self.enabled = enabled
        self.interval = interval
        self._clock = clock
        self._meter = RateMeter()
        self._meter.add(clock(), start)
        self._last_paint = float("-inf")
        self._done = start
        self._rate = 0.0
        self._width = 0

    def update(self, done: int, *, force: bool = False) -> None:
        """Note progress; repaint when the interval has passed (or ``force``)."""
        now = self._clock()
        self._done = done
        self._rate = self._meter.add(now, done)
        if self.enabled and (force or now - self._last_paint >= self.interval):
            self._last_paint = now
            self._paint(render(done, self.total, self._rate))

    def close(self) -> None:
        """Leave the last state on screen and end its line."""
        if self.enabled and self._width:
            self._paint(render(self._done, self.total, self._rate))
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0

    def clear(self) -> None:
        """Erase the line (before printing a message under it)."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def _paint(self, line: str) -> None:
        pad = max(self._width - len(line), 0)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()
        self._width = len(line)

    def __repr__(self) -> str:
        return f"<ProgressBar done={self._done} total={self.total} rate={self._rate:.0f} enabled={self.enabled}>"
