"""The account rate limiter: sliding windows like Klaviyo's, and adapting to what it reports."""

from __future__ import annotations

import asyncio
import time

import pytest

from server._secret import PrivateKey
from server.delivery._klaviyo import (
    Endpoint,
    KlaviyoClient,
    KlaviyoConfig,
    KlaviyoResult,
    Outcome,
    RateLimitHeaders,
)
from server.delivery._payloads import build_bulk_job, build_event
from server.delivery._ratelimit import AccountRateLimiter, RateLimitConfig, RateWindow
from server.store._records import IntegrationSettings
from tests.klaviyo._events import T0, click
from tests.klaviyo_mock import KlaviyoMock, WindowLimit
from tests.support.klaviyo import TEST_KEY

OK = KlaviyoResult(Outcome.ACCEPTED, 202, None, "")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(burst: int = 3, steady: int = 10) -> tuple[AccountRateLimiter, FakeClock]:
    clock = FakeClock()
    config = RateLimitConfig(events=RateWindow(burst, steady), bulk=RateWindow(1, 5))
    return AccountRateLimiter(config, clock=clock), clock


def send(
    rl: AccountRateLimiter, endpoint: Endpoint = Endpoint.EVENTS, result: KlaviyoResult = OK
) -> None:
    assert rl.delay(endpoint) == 0
    rl.reserve(endpoint)
    rl.observe(endpoint, result)


def test_burst_window_slides() -> None:
    rl, clock = limiter(burst=3)
    for _ in range(3):
        send(rl)
        clock.now += 0.1
    # Sent (and answered) at 1000.0, 1000.1, 1000.2; now 1000.3: the first leaves at 1001.0.
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(0.7)
    clock.now = 1001.0
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(0.0, abs=1e-9)
    send(rl)
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(0.1)


def test_steady_window_slides() -> None:
    rl, clock = limiter(burst=100, steady=10)
    for _ in range(10):
        send(rl)
        clock.now += 1.0
    # Ten in 1000..1009; now 1010: the first leaves the 60 s window at 1060.
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(50.0)
    clock.now = 1060.0
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(0.0, abs=1e-9)


def test_requests_count_from_their_answer_not_their_sending() -> None:
    rl, clock = limiter(burst=1)
    rl.reserve(Endpoint.EVENTS)
    clock.now += 0.8  # a slow answer: Klaviyo may have counted it as late as now
    assert rl.delay(Endpoint.EVENTS) > 0  # unanswered requests hold their slot
    rl.observe(Endpoint.EVENTS, OK)
    clock.now += 0.5
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(0.5)


def test_endpoints_are_limited_separately() -> None:
    rl, _ = limiter(burst=3)
    send(rl, Endpoint.BULK)
    assert rl.delay(Endpoint.BULK) > 0
    assert rl.delay(Endpoint.EVENTS) == 0


def test_429_blocks_for_retry_after() -> None:
    rl, clock = limiter(burst=100, steady=100)
    send(rl, result=KlaviyoResult(Outcome.RATE_LIMITED, 429, 7.0, "throttled"))
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(7.0)
    clock.now += 7.0
    assert rl.delay(Endpoint.EVENTS) == 0


def test_429_without_hint_backs_off_exponentially_and_success_resets() -> None:
    rl, clock = limiter(burst=100, steady=100)
    throttled = KlaviyoResult(Outcome.RATE_LIMITED, 429, None, "throttled")
    waits = []
    for _ in range(3):
        send(rl, result=throttled)
        waits.append(rl.delay(Endpoint.EVENTS))
        clock.now += waits[-1]
    assert waits == pytest.approx([1.0, 2.0, 4.0])
    send(rl)
    send(rl, result=throttled)
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(1.0)


def test_remaining_zero_blocks_until_reset() -> None:
    rl, _ = limiter(burst=100, steady=100)
    send(
        rl,
        result=KlaviyoResult(
            Outcome.ACCEPTED, 202, None, "", RateLimitHeaders(limit=100, remaining=0, reset_s=12.0)
        ),
    )
    assert rl.delay(Endpoint.EVENTS) == pytest.approx(12.0)


def test_a_lost_reservation_frees_its_slot_eventually() -> None:
    rl, clock = limiter(burst=1, steady=100)
    rl.reserve(Endpoint.EVENTS)  # never observed
    clock.now += rl.config.pending_timeout_s + 1.0
    assert rl.delay(Endpoint.EVENTS) == 0


async def test_concurrent_acquirers_never_exceed_the_window() -> None:
    rl = AccountRateLimiter(RateLimitConfig(events=RateWindow(5, 1000)))
    sent: list[float] = []

    async def worker() -> None:
        for _ in range(3):
            await rl.acquire(Endpoint.EVENTS)
            sent.append(time.monotonic())
            await asyncio.sleep(0.01)
            rl.observe(Endpoint.EVENTS, OK)

    await asyncio.gather(*(worker() for _ in range(4)))
    sent.sort()
    assert len(sent) == 12
    assert all(later - earlier >= 1.0 for earlier, later in zip(sent, sent[5:], strict=False))


async def test_full_speed_through_the_limiter_gets_no_429(klaviyo_mock: KlaviyoMock) -> None:
    """Hammer the mock with more workers than the limits allow: zero 429, rate near the limit."""
    klaviyo_mock.set_limits(events=WindowLimit(5, 30), bulk=WindowLimit(2, 8))
    rl = AccountRateLimiter(RateLimitConfig(events=RateWindow(5, 30), bulk=RateWindow(2, 8)))
    client = KlaviyoClient(KlaviyoConfig(base_url=klaviyo_mock.base_url, timeout_s=5))
    key = PrivateKey(TEST_KEY)
    settings = IntegrationSettings()
    counts = {Endpoint.EVENTS: 0, Endpoint.BULK: 0}
    duration = 5.0
    deadline = time.monotonic() + duration
    sequence = iter(range(10**6))

    async def worker(endpoint: Endpoint) -> None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                # Cancelling acquire() while it waits reserves nothing.
                await asyncio.wait_for(rl.acquire(endpoint), left)
            except TimeoutError:
                return
            n = next(sequence)
            if endpoint is Endpoint.EVENTS:
                result = await client.create_event(
                    key, build_event(click(f"c{n}"), settings, T0 + 60)
                )
            else:
                result = await client.create_bulk_job(
                    key,
                    build_bulk_job(
                        [click(f"b{n}"), click(f"b{n}x", email="bob@example.com")],
                        settings,
                        T0 + 60,
                    ),
                )
            rl.observe(endpoint, result)
            assert result.outcome is Outcome.ACCEPTED, result.detail
            counts[endpoint] += 1

    try:
        await asyncio.gather(
            *(worker(Endpoint.EVENTS) for _ in range(8)), *(worker(Endpoint.BULK) for _ in range(4))
        )
    finally:
        await client.aclose()
    assert klaviyo_mock.throttled_count == 0
    # Burst 5/s for 5 s is 25 (+ the first second's burst at t=0), capped by 30/min; bulk is
    # 2/s capped by 8/min. Near the limit, not merely under it:
    assert 24 <= counts[Endpoint.EVENTS] <= 30
    assert counts[Endpoint.BULK] == 8
    assert len(klaviyo_mock.timeline()) == counts[Endpoint.EVENTS] + 2 * counts[Endpoint.BULK]


async def test_limiter_adapts_when_the_account_is_shared(klaviyo_mock: KlaviyoMock) -> None:
    """Someone else uses the account: our windows cannot see it, the 429s teach us."""
    klaviyo_mock.set_limits(events=WindowLimit(3, 100))
    rl = AccountRateLimiter(RateLimitConfig(events=RateWindow(100, 1000)))
    client = KlaviyoClient(KlaviyoConfig(base_url=klaviyo_mock.base_url, timeout_s=5))
    key = PrivateKey(TEST_KEY)
    accepted = 0
    deadline = time.monotonic() + 2.5
    try:
        while time.monotonic() < deadline:
            await rl.acquire(Endpoint.EVENTS)
            result = await client.create_event(
                key, build_event(click(f"c{accepted}"), IntegrationSettings(), T0 + 60)
            )
            rl.observe(Endpoint.EVENTS, result)
            accepted += result.outcome is Outcome.ACCEPTED
    finally:
        await client.aclose()
    # Without adapting this loop would hammer hundreds of 429s; with it, one per window.
    assert klaviyo_mock.throttled_count <= 3
    assert accepted >= 6


def _sent_in_windows(times: list[float]) -> tuple[int, int]:
    """The most requests any 1 s window and any 60 s window held (to the microsecond: the
    fake clock's sums of floats land a hair off the windows' edges)."""
    eps = 1e-6
    worst_burst = max(sum(1 for u in times if t - 1 + eps < u <= t) for t in times)
    worst_steady = max(sum(1 for u in times if t - 60 + eps < u <= t) for t in times)
    return worst_burst, worst_steady


def test_a_successor_counts_what_the_previous_holder_sent_and_may_have_sent_unseen() -> None:
    # The previous holder sent at its limits (3/s, 10/min) and recorded its usage 2 s before
    # the takeover; its lease lapsed only now, so it may have gone on sending meanwhile.
    old, old_clock = limiter()
    sent: list[float] = []
    for _ in range(6):
        while old.delay(Endpoint.EVENTS) > 0:
            old_clock.now += 0.05
        send(old)
        sent.append(old_clock.now)
    recorded = old.usage()
    # Unseen by anyone: the old holder kept sending until its lease lapsed, 2 s later.
    for _ in range(4):
        old_clock.now += 0.5
        if old.delay(Endpoint.EVENTS) == 0:
            send(old)
            sent.append(old_clock.now)
    new, new_clock = limiter()
    new_clock.now = old_clock.now  # both on one timeline for the check below
    new.take_over(recorded, usage_age_s=2.0, sending_until_s=0.0)
    while len(sent) < 25:
        if (wait := new.delay(Endpoint.EVENTS)) > 0:
            new_clock.now += wait
            continue
        send(new)
        sent.append(new_clock.now)
    burst, steady = _sent_in_windows(sent)
    assert burst <= 3
    assert steady <= 10


def test_a_released_lease_hands_over_exactly_what_was_sent() -> None:
    old, old_clock = limiter()
    for _ in range(3):
        send(old)
        old_clock.now += 1.0
    new, _ = limiter()
    new.take_over(old.usage(), usage_age_s=0.0, sending_until_s=-30.0)
    assert new.usage()["events"] == [3.0, 2.0, 1.0]
    assert new.delay(Endpoint.EVENTS) == 0  # 3 of 10 used: room left, none imagined


def test_a_garbled_or_empty_handover_starts_fresh() -> None:
    new, _ = limiter()
    new.take_over({}, usage_age_s=0.0, sending_until_s=-1.0)
    assert new.delay(Endpoint.EVENTS) == 0


def test_taking_over_the_same_record_twice_counts_it_once() -> None:
    old, _ = limiter()
    for _ in range(3):
        send(old)
    record = old.usage()
    new, _ = limiter()
    new.take_over(record, usage_age_s=0.0, sending_until_s=-30.0)
    new.take_over(record, usage_age_s=0.0, sending_until_s=-30.0)
    assert len(new.usage()["events"]) == 3
