"""Register, forward, and watch the events arrive at the Klaviyo mock exactly as sent."""

from __future__ import annotations

import time

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.klaviyo_mock import KlaviyoMockThread
from tests.support.calls import (
    forward,
    integration,
    make_click,
    new_key,
    register,
    rpc_code,
    wait_for,
)
from tests.support.forwarder import BACKENDS, ForwarderProcess
from tests.support.klaviyo import deliveries
from tests.support.klaviyo_spec import validate_schema
from tests.support.openbao import new_workspace_id

ON_EVERY_BACKEND = pytest.mark.parametrize("store_backend", BACKENDS)


@ON_EVERY_BACKEND
def test_click_and_conversion_reach_the_timeline_exactly(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-e2e")
    register(fwd, ws, key)
    click = make_click(
        ws,
        "clk-1",
        link_id="lnk-9",
        short_url="https://elido.link/abc",
        destination_url="https://shop.example/sale?email=jane%2Bvip%40example.com&utm_source=klaviyo&utm_campaign=bf",
        user_agent="Mozilla/5.0",
        referrer="https://mail.example/",
    )
    assert forward(fwd, [click]) == [pb.CLICK_DISPOSITION_QUEUED]
    conversion = pb.Conversion(
        conversion_id="order-77", workspace_id=ws, click_id="clk-1", value=19.99, currency="USD"
    )
    conversion.properties.update({"order_id": "77"})
    assert (
        fwd.stub()
        .ForwardConversion(
            pb.ForwardConversionRequest(conversion=conversion), metadata=fwd.ingest()
        )
        .disposition
        == pb.CONVERSION_DISPOSITION_QUEUED
    )

    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-e2e")) == 2,
        what="two events on the timeline",
    )
    events = {e.metric: e for e in klaviyo_mock_thread.timeline("acct-e2e")}
    clicked = events["Elido Link Clicked"]
    assert clicked.profile == {"email": "jane+vip@example.com"}
    assert clicked.unique_id == "clk-1"
    assert clicked.properties == {
        "click_id": "clk-1",
        "link_id": "lnk-9",
        "short_url": "https://elido.link/abc",
        "destination_url": click.destination_url,
        "user_agent": "Mozilla/5.0",
        "referrer": "https://mail.example/",
        "utm_campaign": "bf",
        "utm_source": "klaviyo",
    }
    assert clicked.time == time.strftime(
        "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(click.click_time.seconds)
    )
    assert not clicked.backfill
    converted = events["Elido Conversion"]
    assert converted.profile == {"email": "jane+vip@example.com"}
    assert (converted.unique_id, converted.value, converted.value_currency) == (
        "order-77",
        19.99,
        "USD",
    )
    assert converted.properties["order_id"] == "77"

    sent = [r for r in deliveries(klaviyo_mock_thread.requests) if r.path == "/api/events"]
    assert len(sent) == 2
    for request in sent:
        assert request.header("authorization") == f"Klaviyo-API-Key {key}"
        assert request.header("revision") == "2026-07-15"
        assert request.header("content-type") == "application/vnd.api+json"
        assert request.header("accept") == "application/vnd.api+json"
        validate_schema("EventCreateQueryV2", request.json)
        assert request.status == 202
    status = integration(fwd, ws).delivery
    assert status.delivered_count == 2
    assert status.queued_count == 0
    assert status.HasField("last_delivery_time")


@ON_EVERY_BACKEND
def test_large_backlog_goes_out_as_bulk_jobs_grouped_by_profile(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-bulk")
    register(fwd, ws, key, click_metric_name="Bulk Click")
    clicks = [make_click(ws, f"b-{i}", email=f"user{i % 40}@example.com") for i in range(1500)]
    assert set(forward(fwd, clicks)) == {pb.CLICK_DISPOSITION_QUEUED}
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-bulk")) == 1500,
        timeout_s=30,
        what="1500 events",
    )
    bulk = [r for r in klaviyo_mock_thread.requests if r.path == "/api/event-bulk-create-jobs"]
    assert bulk, "a backlog of 1500 must use Bulk Create Events"
    for request in bulk:
        validate_schema("EventsBulkCreateJob", request.json)
        profiles = request.json["data"]["attributes"]["events-bulk-create"]["data"]
        assert sum(len(p["attributes"]["events"]["data"]) for p in profiles) <= 1000
    assert {e.unique_id for e in klaviyo_mock_thread.timeline("acct-bulk")} == {
        f"b-{i}" for i in range(1500)
    }
    assert klaviyo_mock_thread.throttled_count == 0


@ON_EVERY_BACKEND
def test_rejected_key_holds_events_until_a_new_key_is_registered(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    ws, revoked = new_workspace_id(), new_key()
    klaviyo_mock_thread.add_key(revoked, "acct-revoked")
    register(fwd, ws, revoked)
    klaviyo_mock_thread.remove_key(revoked)  # revoked in Klaviyo after registration: 401
    forward(fwd, [make_click(ws, f"h-{i}", email="held@example.com") for i in range(3)])
    wait_for(
        lambda: integration(fwd, ws).state == pb.INTEGRATION_STATE_KEY_REJECTED, what="key rejected"
    )
    held = integration(fwd, ws)
    assert "401" in held.state_reason
    assert held.delivery.queued_count == 3
    good = new_key()
    klaviyo_mock_thread.add_key(good, "acct-held")
    register(fwd, ws, good)
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-held")) == 3, what="held events delivered"
    )
    assert integration(fwd, ws).state == pb.INTEGRATION_STATE_ACTIVE


@ON_EVERY_BACKEND
def test_invalid_event_is_failed_listed_and_replayable(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    from tests.klaviyo_mock import Fault, FaultKind

    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-fail")
    register(fwd, ws, key)
    klaviyo_mock_thread.inject(Fault(FaultKind.STATUS, status=400, count=1, account="acct-fail"))
    forward(fwd, [make_click(ws, "f-1", email="f@example.com")])
    stub = fwd.stub()
    wait_for(lambda: integration(fwd, ws).delivery.failed_count == 1, what="event failed")
    failed = stub.ListFailedEvents(
        pb.ListFailedEventsRequest(workspace_id=ws), metadata=fwd.admin()
    ).failed_events
    assert [(f.source_id, f.kind) for f in failed] == [("f-1", pb.EVENT_KIND_CLICK)]
    assert "Klaviyo rejected" in failed[0].last_error
    assert (
        rpc_code(
            lambda: stub.ReplayFailedEvents(
                pb.ReplayFailedEventsRequest(workspace_id=ws), metadata=fwd.admin()
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    replayed = stub.ReplayFailedEvents(
        pb.ReplayFailedEventsRequest(workspace_id=ws, event_ids=[failed[0].event_id]),
        metadata=fwd.admin(),
    )
    assert replayed.replayed_count == 1
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-fail")) == 1, what="replayed event delivered"
    )
    assert integration(fwd, ws).delivery.failed_count == 0


@ON_EVERY_BACKEND
def test_one_workspaces_bad_key_and_throttling_do_not_delay_another(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    from tests.klaviyo_mock import WindowLimit

    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    slow_key, good_key = new_key(), new_key()
    klaviyo_mock_thread.add_key(slow_key, "acct-a")
    klaviyo_mock_thread.add_key(good_key, "acct-b")
    klaviyo_mock_thread.set_limits(
        account="acct-a", events=WindowLimit(2, 10), bulk=WindowLimit(1, 2)
    )
    ws_a, ws_bad, ws_b = new_workspace_id("a"), new_workspace_id("bad"), new_workspace_id("b")
    register(fwd, ws_a, slow_key)
    bad_key = new_key()
    klaviyo_mock_thread.add_key(bad_key, "acct-bad")
    register(fwd, ws_bad, bad_key)
    klaviyo_mock_thread.remove_key(bad_key)  # revoked after registration: 401 at delivery
    register(fwd, ws_b, good_key)
    forward(fwd, [make_click(ws_a, f"a-{i}", email=f"a{i}@example.com") for i in range(2000)])
    forward(fwd, [make_click(ws_bad, f"x-{i}", email="x@example.com") for i in range(50)])
    latencies = []
    for i in range(5):
        started = time.monotonic()
        forward(fwd, [make_click(ws_b, f"b-{i}", email="b@example.com")])
        wait_for(lambda n=i: len(klaviyo_mock_thread.timeline("acct-b")) == n + 1, what="B's click")
        latencies.append(time.monotonic() - started)
    assert max(latencies) < 2.0, f"workspace B waited {max(latencies):.2f}s behind A: {latencies}"
    assert len(klaviyo_mock_thread.timeline("acct-a")) < 2000  # A really is throttled meanwhile


def test_stale_clicks_are_sent_as_backfill_per_the_integrations_policy(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
) -> None:
    from google.protobuf import duration_pb2

    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-backfill")
    register(fwd, ws, key, backfill_after=duration_pb2.Duration(seconds=3600))
    forward(
        fwd,
        [
            make_click(ws, "fresh", email="a@example.com", age_s=60),
            make_click(ws, "stale", email="a@example.com", age_s=2 * 3600),
        ],
    )
    wait_for(lambda: len(klaviyo_mock_thread.timeline("acct-backfill")) == 2, what="both clicks")
    backfill = {e.unique_id: e.backfill for e in klaviyo_mock_thread.timeline("acct-backfill")}
    assert backfill == {"fresh": False, "stale": True}


def test_list_integrations_pages_through_every_workspace(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory()
    workspaces = sorted(new_workspace_id("page") for _ in range(7))
    for ws in workspaces:
        register(fwd, ws, new_key())
    seen, token, pages = [], "", 0
    while True:
        page = fwd.stub().ListIntegrations(
            pb.ListIntegrationsRequest(page_size=3, page_token=token), metadata=fwd.admin()
        )
        seen += [i.workspace_id for i in page.integrations]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == workspaces
    assert pages == 3
    bad = rpc_code(
        lambda: fwd.stub().ListIntegrations(
            pb.ListIntegrationsRequest(page_size=5000), metadata=fwd.admin()
        )
    )
    assert bad == grpc.StatusCode.INVALID_ARGUMENT
