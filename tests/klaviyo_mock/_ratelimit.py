"""Klaviyo's per-account limits as the mock enforces them: two sliding windows per endpoint.

Definition (the forwarder's limiter uses the same one): a request to an endpoint is admitted
when, counting only admitted requests of the same account and endpoint, fewer than
``burst_per_s`` arrived in the last 1 s and fewer than ``steady_per_min`` in the last 60 s.
Throttled requests (429) do not count; neither do requests answered by an injected fault.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from tests.klaviyo_mock._config import WindowLimit

BURST_S = 1.0
STEADY_S = 60.0


@dataclass(frozen=True, slots=True)
class Admission:
    """The verdict on one request."""

    admitted: bool
    # For a 429: whole seconds until a request would be admitted (at least 1).
    retry_after_s: int
    # Steady-window figures for RateLimit-* headers on admitted requests.
    limit: int
    remaining: int
    reset_s: int


class SlidingWindows:
    """Burst and steady sliding windows for one (account, endpoint)."""

    __slots__ = ("_burst", "_steady")

    def __init__(self) -> None:
        self._burst: deque[float] = deque()
        self._steady: deque[float] = deque()

    def admit(self, now: float, limit: WindowLimit) -> Admission:
        """Admits (and counts) a request arriving at ``now``, or says how long to wait."""
        burst, steady = self._burst, self._steady
        while burst and burst[0] <= now - BURST_S:
            burst.popleft()
        while steady and steady[0] <= now - STEADY_S:
            steady.popleft()
        waits = []
        if len(burst) >= limit.burst_per_s:
            waits.append(burst[len(burst) - limit.burst_per_s] + BURST_S - now)
        if len(steady) >= limit.steady_per_min:
            waits.append(steady[len(steady) - limit.steady_per_min] + STEADY_S - now)
        if waits:
            retry = max(1, math.ceil(max(waits)))
            return Admission(False, retry, limit.steady_per_min, 0, retry)
        burst.append(now)
        steady.append(now)
        remaining = max(0, limit.steady_per_min - len(steady))
        reset = math.ceil(steady[0] + STEADY_S - now)
        return Admission(True, 0, limit.steady_per_min, remaining, reset)
