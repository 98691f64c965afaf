"""Who appends next, and when: the streams waiting for a turn, in order, and the rate that paces them.

The shipper's dispatcher asks this for the next lane that may go and for when
to look again; the rules live in ``agent.pacing`` (the token bucket) and here
(who may skip it).  A lane that is behind (a full append's worth waiting)
takes no token: the rate exists so that waiting streams gather their lines
into fewer appends, and its next append is as full as it can get however
long it waits.  So a busy stream appends as fast as the server answers (1 MiB
appends at 200 a second would cap it at ~210 MB/s), and its CPU grows with
its bytes.  With many lanes waiting, the dispatcher waits for a group of
tokens (``DISPATCH_GRAIN`` of the rate) and starts that many turns at once:
their intents share one checkpoint write, and one timer (a cancel scope
expiring) serves the group instead of one per append.  No I/O here.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict

from agent.lanes import Lane
from agent.pacing import TokenBucket, turn_interval

DISPATCH_GRAIN = 0.1  # seconds of tokens a dispatcher wake-up may wait for when many lanes wait (``tokens_per_wake``)


class TurnOrder:
    """Lanes waiting for a turn (first come, first served), the turns under way, and the token bucket."""

    def __init__(self, rate: float, burst: float, *, max_turns: int, max_bytes: int) -> None:
        self.tokens = TokenBucket(rate, burst)
        # Insertion order is turn order (an OrderedDict pops its first item in O(1)).
        self.waiting: OrderedDict[str, Lane] = OrderedDict()
        self.running = 0  # turns under way
        self.max_turns = max_turns
        self.max_bytes = max_bytes
        self.draining = False  # every lane goes, tokens aside

    @property
    def rate(self) -> float:
        return self.tokens.rate

    @rate.setter
    def rate(self, rate: float) -> None:
        self.tokens.rate = rate

    def __len__(self) -> int:
        return len(self.waiting)

    def __contains__(self, stream: str) -> bool:
        return stream in self.waiting

    def line_up(self, lane: Lane) -> int:
        """Put ``lane`` at the back of the line; its place (0: next)."""
        self.waiting[lane.stream] = lane
        return len(self.waiting) - 1

    def leave(self, stream: str) -> None:
        self.waiting.pop(stream, None)

    def interval(self) -> float:
        """About how long a stream waits between two appends now."""
        return turn_interval(self.running + len(self.waiting), self.rate)

    def within(self, turns: int) -> list[str]:
        """Streams whose turns come within the next ``turns`` turns, soonest first."""
        return list(itertools.islice(self.waiting, turns))

    def beyond(self, turns: int) -> set[str]:
        """Streams waiting for a turn that comes after the next ``turns`` turns."""
        return set(itertools.islice(self.waiting, turns, None))

    def next_turn(self, now: float) -> Lane | None:
        """Take the first waiting lane if a turn is free and it may go now."""
        if self.waiting and self.running < self.max_turns and self.may_go(next(iter(self.waiting.values())), now):
            return self.waiting.popitem(last=False)[1]
        return None

    def next_look(self, now: float) -> float:
        """When the dispatcher should look again unless woken: when enough tokens are there for the
        lanes waiting (the first is not behind, or it would have gone), never while every turn is taken."""
        if self.waiting and self.running < self.max_turns:
            return self.tokens.ready_at(now, self.tokens_per_wake())
        return math.inf

    def may_go(self, lane: Lane, now: float) -> bool:
        """Its append may start now: draining, or the lane is behind, or a token is there."""
        if self.draining or self.behind(lane):
            return True
        return self.tokens.take(now)

    def behind(self, lane: Lane) -> bool:
        waiting = lane.queued
        if lane.retry is not None:
            waiting += sum(b.size for b in lane.retry[0])
        return waiting >= self.max_bytes

    def tokens_per_wake(self) -> int:
        """How many tokens to wait for: with many lanes waiting, as many as ``DISPATCH_GRAIN`` of the rate
        brings (one turn's wait grows by at most that grain), never more than lanes wait or turns are free."""
        return max(1, min(len(self.waiting), self.max_turns - self.running, int(self.rate * DISPATCH_GRAIN)))
