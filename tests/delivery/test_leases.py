"""Delivery leases as a quiet account sees them: taken, given up, taken again, many times."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.klaviyo_mock import KlaviyoMockThread, WindowLimit
from tests.support.calls import forward, make_click, new_key, register, wait_for
from tests.support.forwarder import BACKENDS, ForwarderProcess


@pytest.mark.parametrize("store_backend", BACKENDS)
def test_a_trickle_of_clicks_is_delivered_at_once_however_often_the_lease_changes_hands(
    forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread, store_backend: str
) -> None:
    # Each click is delivered, the lease given up (nothing left), and taken again with the
    # usage it recorded: counted once each time, the account stays far below its limit.
    mock = klaviyo_mock_thread
    mock.set_limits(account="trickle", events=WindowLimit(10, 100))
    fwd: ForwarderProcess = forwarder_factory(
        klaviyo_url=mock.base_url,
        env={"KLAVIYO_EVENTS_BURST_PER_S": "10", "KLAVIYO_EVENTS_STEADY_PER_MIN": "100"},
    )
    key = new_key()
    mock.add_key(key, "trickle")
    register(fwd, "trickle-ws", key)
    # The registration's key check is one request the limiter does not count (operator
    # guide, "The key check"): let it leave the 1 s burst window before the trickle starts.
    time.sleep(1.2)
    for i in range(30):
        forward(fwd, [make_click("trickle-ws", f"t{i}", f"t{i}@example.com")])
        # Far longer than a delivery takes; far shorter than the minute a wrongly full
        # window would hold it back.
        wait_for(lambda i=i: len(mock.timeline("trickle")) > i, 10, f"click {i} delivered")
    assert mock.throttled_count == 0
