"""Faults with real processes: 429 storms, 5xx outages, SIGKILL mid-delivery. Nothing lost,
nothing duplicated on the timeline, the backlog drains."""

from __future__ import annotations

import time

import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.klaviyo_mock import Fault, FaultKind, KlaviyoMockThread, WindowLimit
from tests.support.calls import forward, integration, make_click, new_key, register, wait_for
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id

pytestmark = pytest.mark.slow


def unique_ids(mock: KlaviyoMockThread, account: str) -> list[str]:
    return [e.unique_id or "" for e in mock.timeline(account)]


@pytest.mark.parametrize("retry_after_header", [True, False], ids=["retry-after", "no-retry-after"])
def test_429_storm_loses_nothing_and_duplicates_nothing(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,
    retry_after_header: bool,  # type: ignore[no-untyped-def]
) -> None:
    # The forwarder believes Klaviyo's documented limits; this account's are far lower, so
    # Klaviyo answers 429 (with or without Retry-After) until the forwarder adapts.
    fwd: ForwarderProcess = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url, env={"FORWARDER_SINGLE_THRESHOLD": "1000"}
    )
    key, ws, account = new_key(), new_workspace_id(), f"acct-429-{retry_after_header}"
    klaviyo_mock_thread.add_key(key, account)
    klaviyo_mock_thread.set_limits(
        account=account, events=WindowLimit(5, 1000), retry_after_header=retry_after_header
    )
    register(fwd, ws, key)
    ids = [f"s-{i}" for i in range(40)]
    forward(fwd, [make_click(ws, i, email=f"{i}@example.com") for i in ids])
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline(account)) == 40, timeout_s=60, what="storm drained"
    )
    assert klaviyo_mock_thread.throttled_count > 0, "the storm did happen"
    assert sorted(unique_ids(klaviyo_mock_thread, account)) == sorted(ids)
    status = integration(fwd, ws).delivery
    assert (status.queued_count, status.failed_count, status.delivered_count) == (0, 0, 40)


def test_forwarder_paced_to_the_documented_windows_never_gets_a_429(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    limits = {
        "KLAVIYO_EVENTS_BURST_PER_S": "20",
        "KLAVIYO_EVENTS_STEADY_PER_MIN": "1000",
        "KLAVIYO_BULK_BURST_PER_S": "2",
        "KLAVIYO_BULK_STEADY_PER_MIN": "150",
        "FORWARDER_SINGLE_THRESHOLD": "1000",
    }
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url, env=limits)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-paced")
    klaviyo_mock_thread.set_limits(
        account="acct-paced", events=WindowLimit(20, 1000), bulk=WindowLimit(2, 150)
    )
    register(fwd, ws, key)
    # The key check is not counted by the forwarder's limiter (operator guide, "The key
    # check"): let its request leave the burst window before pacing is judged.
    time.sleep(1.2)
    forward(fwd, [make_click(ws, f"p-{i}", email="p@example.com") for i in range(100)])
    started = time.monotonic()
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-paced")) == 100,
        timeout_s=30,
        what="paced drain",
    )
    elapsed = time.monotonic() - started
    assert klaviyo_mock_thread.throttled_count == 0
    assert elapsed > 3.5, (
        f"100 events at 20/s cannot take {elapsed:.1f}s without breaking the window"
    )


def test_5xx_outage_of_some_seconds_then_everything_arrives_once(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-outage")
    register(fwd, ws, key)
    klaviyo_mock_thread.inject(
        Fault(FaultKind.STATUS, status=503, duration_s=3.0, account="acct-outage")
    )
    klaviyo_mock_thread.inject(Fault(FaultKind.DROP, count=3, account="acct-outage"))
    ids = [f"o-{i}" for i in range(300)]
    forward(fwd, [make_click(ws, i, email=f"u{n % 7}@example.com") for n, i in enumerate(ids)])
    forward(fwd, [make_click(ws, "o-single", email="single@example.com")])
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-outage")) == 301,
        timeout_s=40,
        what="drain after outage",
    )
    assert sorted(unique_ids(klaviyo_mock_thread, "acct-outage")) == sorted([*ids, "o-single"])
    assert integration(fwd, ws).delivery.failed_count == 0
    assert any(r.status == 503 for r in klaviyo_mock_thread.requests), "the outage did happen"


def test_sigkill_during_delivery_then_restart_delivers_every_event_exactly_once(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url, env={"FORWARDER_SINGLE_THRESHOLD": "1000"}
    )
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-kill")
    register(fwd, ws, key)
    # Slow answers keep requests in flight when the process dies.
    klaviyo_mock_thread.inject(
        Fault(FaultKind.SLOW, delay_s=0.3, duration_s=60, account="acct-kill")
    )
    ids = [f"k-{i}" for i in range(200)]
    assert set(forward(fwd, [make_click(ws, i, email=f"{i}@example.com") for i in ids])) == {
        pb.CLICK_DISPOSITION_QUEUED
    }
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-kill")) >= 20, what="delivery under way"
    )
    fwd.kill()
    delivered_before = len(klaviyo_mock_thread.timeline("acct-kill"))
    assert delivered_before < 200, "the kill must land mid-delivery"
    klaviyo_mock_thread.clear_faults()
    fwd.start()
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-kill")) == 200,
        timeout_s=40,
        what="drain after SIGKILL",
    )
    assert sorted(unique_ids(klaviyo_mock_thread, "acct-kill")) == sorted(ids)
    wait_for(lambda: integration(fwd, ws).delivery.queued_count == 0, what="outbox empty")
