"""Per-Klaviyo-account rate limiting that keeps us inside the windows before Klaviyo says so.

Klaviyo limits each account (shared by all its private keys) per endpoint with a burst window
and a steady window. We read them as sliding windows, as the test mock enforces them: a
request is allowed when fewer than ``burst_per_s`` requests arrived in the last second and
fewer than ``steady_per_min`` in the last 60 seconds.

Why requests are timed at their *answer*, not at their sending: Klaviyo counts a request when
it arrives, somewhere between our send and our receiving the answer. Counting every request as
in the window from its send until its answer, and then as if it arrived when its answer came
(the latest it can have arrived), makes our count of any window at least Klaviyo's, whatever
the network's jitter: no safety margin to tune, and the only cost is one round trip per window
(negligible against 60 s). Which answer belongs to which request does not matter, only the
multiset of times does.

On top of the windows it adapts to what Klaviyo reports: after a 429 the endpoint is blocked
until ``Retry-After`` (or the "Expected available in N seconds" text, or an exponential
backoff when neither is given), and ``RateLimit-Remaining: 0`` blocks it until
``RateLimit-Reset`` — both cover other users of the same account (another tool with its own
key) that our windows cannot see.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import structlog

from server._metrics import RATELIMIT_BLOCKS, RATELIMIT_WAIT
from server.delivery._klaviyo import Endpoint, KlaviyoResult, Outcome

log = structlog.get_logger(__name__)

BURST_WINDOW_S: Final = 1.0
STEADY_WINDOW_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class RateWindow:
    """One endpoint's documented limits."""

    burst_per_s: int
    steady_per_min: int


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Limits per endpoint, and how to back off when Klaviyo throttles without saying how long."""

    events: RateWindow = field(default_factory=lambda: RateWindow(350, 3500))
    bulk: RateWindow = field(default_factory=lambda: RateWindow(10, 150))
    # Backoff after a 429 without Retry-After or "Expected available" text: base * 2^(n-1),
    # capped; n counts consecutive such 429s.
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    # Longest block a server-reported Retry-After / Reset may impose (a bogus header must not
    # stall a workspace for hours; the engine's retries cover the rest).
    max_block_s: float = 300.0
    # A request with no observe() after this long is counted as answered then (it was lost by
    # the caller); longer than any sane request timeout.
    pending_timeout_s: float = 120.0
    # How often acquire() re-checks when only unanswered requests fill a window.
    poll_s: float = 0.01

    def window(self, endpoint: Endpoint) -> RateWindow:
        """The limits of ``endpoint``."""
        return self.events if endpoint is Endpoint.EVENTS else self.bulk


class _EndpointState:
    __slots__ = ("answered", "blocked_until", "consecutive_429", "pending", "window")

    def __init__(self, window: RateWindow) -> None:
        self.window = window
        # Send times of requests not yet answered, oldest first.
        self.pending: deque[float] = deque()
        # Answer times of answered requests within the steady window, oldest first.
        self.answered: deque[float] = deque()
        self.blocked_until = 0.0
        self.consecutive_429 = 0


class AccountRateLimiter:
    """Rate limiter for one Klaviyo account; not thread-safe (one event loop)."""

    def __init__(
        self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config
        self._clock = clock
        self._states = {endpoint: _EndpointState(config.window(endpoint)) for endpoint in Endpoint}

    @property
    def config(self) -> RateLimitConfig:
        """The limits in force."""
        return self._config

    def delay(self, endpoint: Endpoint) -> float:
        """Seconds until one more request to ``endpoint`` is allowed (0 = now)."""
        now = self._clock()
        state = self._prune(endpoint, now)
        wait = max(0.0, state.blocked_until - now)
        for limit, span in (
            (state.window.burst_per_s, BURST_WINDOW_S),
            (state.window.steady_per_min, STEADY_WINDOW_S),
        ):
            wait = max(wait, self._window_wait(state, now, limit, span))
        return wait

    def reserve(self, endpoint: Endpoint) -> None:
        """Records a request to ``endpoint`` being sent now."""
        self._states[endpoint].pending.append(self._clock())

    async def acquire(self, endpoint: Endpoint) -> None:
        """Waits until a request to ``endpoint`` is allowed, then reserves it."""
        # ASYNC110 wants an Event, but the wait is for the clock (a window sliding), which no
        # one could set; a sleep of exactly the computed delay is the right primitive.
        while (wait := self.delay(endpoint)) > 0:
            RATELIMIT_WAIT.labels(str(endpoint)).inc(wait)
            await asyncio.sleep(wait)
        # No await between the last delay() and reserve(): concurrent acquirers cannot both
        # take the last slot.
        self.reserve(endpoint)

    def observe(self, endpoint: Endpoint, result: KlaviyoResult) -> None:
        """Records the answer to a reserved request and adapts to what Klaviyo reported."""
        now = self._clock()
        state = self._states[endpoint]
        if state.pending:
            state.pending.popleft()
        state.answered.append(now)
        if result.outcome is Outcome.RATE_LIMITED:
            state.consecutive_429 += 1
            wait = result.retry_after_s
            if wait is None:
                wait = min(
                    self._config.backoff_max_s,
                    self._config.backoff_base_s * 2 ** (state.consecutive_429 - 1),
                )
            self._block(endpoint, state, now, wait, "throttled")
            return
        if result.status_code is not None:
            state.consecutive_429 = 0
        headers = result.rate_limit
        if headers is not None and headers.remaining == 0 and headers.reset_s:
            self._block(endpoint, state, now, headers.reset_s, "steady window exhausted")

    def usage(self) -> dict[str, list[float]]:
        """Per endpoint, how many seconds ago each request of the steady window was counted.

        Unanswered requests count as now. Recorded with the delivery lease, so that whoever
        holds the account next starts from it (see :meth:`take_over`).
        """
        now = self._clock()
        ages: dict[str, list[float]] = {}
        for endpoint in Endpoint:
            state = self._prune(endpoint, now)
            ages[endpoint.value] = [round(now - t, 3) for t in state.answered] + [0.0] * len(
                state.pending
            )
        return ages

    def take_over(
        self, usage: Mapping[str, Sequence[float]], usage_age_s: float, sending_until_s: float
    ) -> None:
        """Start from a previous holder's requests, in place of what this limiter counted.

        ``usage`` is that holder's :meth:`usage`, recorded ``usage_age_s`` ago; after that it
        may have gone on sending until ``sending_until_s`` from now (<= 0), unseen. Those
        unseen requests are counted as many as the limits allowed it, and all at the last
        moment it could have sent them (the latest counts longest in a window), so that
        together the two holders stay within the account's limits. What this limiter counted
        before is dropped: the usage record is the account's whole history up to its writing
        (each holder's record includes what it took over), so adding to it would count twice.
        """
        now = self._clock()
        recorded_at = now - max(0.0, usage_age_s)
        for endpoint in Endpoint:
            state = self._states[endpoint]
            times = sorted(recorded_at - age for age in usage.get(endpoint.value, ()))
            until = now + min(0.0, sending_until_s)
            unseen = _most_allowed(times, recorded_at, until, state.window)
            merged = sorted([*times, *[until] * unseen])
            state.answered = deque(t for t in merged if t > now - STEADY_WINDOW_S)

    def in_flight(self, endpoint: Endpoint) -> int:
        """Requests reserved and not yet observed."""
        return len(self._states[endpoint].pending)

    def _block(
        self, endpoint: Endpoint, state: _EndpointState, now: float, wait: float, why: str
    ) -> None:
        wait = min(max(0.0, wait), self._config.max_block_s)
        if now + wait > state.blocked_until:
            RATELIMIT_BLOCKS.labels(str(endpoint), why.replace(" ", "_")).inc()
            state.blocked_until = now + wait
            log.info(
                "klaviyo.rate_limit.blocked",
                endpoint=str(endpoint),
                seconds=round(wait, 3),
                reason=why,
            )

    def _prune(self, endpoint: Endpoint, now: float) -> _EndpointState:
        state = self._states[endpoint]
        timeout = self._config.pending_timeout_s
        while state.pending and state.pending[0] <= now - timeout:
            # Never observed: count it as answered at the latest time it plausibly was. Keeps
            # `answered` sorted because pending is in send order and timeout is constant.
            self._insert_sorted(state.answered, state.pending.popleft() + timeout)
        while state.answered and state.answered[0] <= now - STEADY_WINDOW_S:
            state.answered.popleft()
        return state

    @staticmethod
    def _insert_sorted(times: deque[float], value: float) -> None:
        if not times or times[-1] <= value:
            times.append(value)
            return
        times.append(value)
        ordered = sorted(times)
        times.clear()
        times.extend(ordered)

    def _window_wait(self, state: _EndpointState, now: float, limit: int, span: float) -> float:
        """Seconds until fewer than ``limit`` requests are in the last ``span`` seconds."""
        pending = len(state.pending)
        answered = state.answered
        # Count answered requests inside (now - span, now]; they are sorted, so scan from the end.
        if span >= STEADY_WINDOW_S:
            inside = len(answered)  # _prune() already dropped everything older.
        else:
            inside = 0
            for t in reversed(answered):
                if t <= now - span:
                    break
                inside += 1
        excess = pending + inside - limit + 1
        if excess <= 0:
            return 0.0
        if excess > inside:
            # Unanswered requests alone fill the window: wait for answers, not for the clock.
            return self._config.poll_s
        # The window has room once the `excess` oldest answered requests inside it leave it.
        oldest_inside = len(answered) - inside
        return answered[oldest_inside + excess - 1] + span - now


def _most_allowed(times: list[float], start: float, end: float, window: RateWindow) -> int:
    """How many more requests than ``times`` (sorted) the limits allowed in [start, end]."""
    result = list(times)
    if window.burst_per_s < 1 or window.steady_per_min < 1:
        return 0
    t = start
    while t <= end:
        in_burst = len(result) - bisect.bisect_right(result, t - BURST_WINDOW_S)
        in_steady = len(result) - bisect.bisect_right(result, t - STEADY_WINDOW_S)
        if in_burst < window.burst_per_s and in_steady < window.steady_per_min:
            bisect.insort(result, t)
            continue
        # The next moment a slot frees: when the oldest request of a full window leaves it.
        next_t = t
        if in_burst >= window.burst_per_s:
            next_t = max(next_t, result[-window.burst_per_s] + BURST_WINDOW_S)
        if in_steady >= window.steady_per_min:
            next_t = max(next_t, result[-window.steady_per_min] + STEADY_WINDOW_S)
        t = next_t + 1e-6
    return len(result) - len(times)
