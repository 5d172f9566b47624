"""The async and sync clients against a real grpc.aio server returning rich errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from client import (
    AsyncForwarderClient,
    ClientConfig,
    ForwarderClient,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    integration_settings,
)
from tests.client.conftest import FAST_RETRY
from tests.client.fake_server import INGEST_TOKEN, Failure, RunningFake

KEY = "pk_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7"


def _unavailable(delay_s: float | None = None) -> Failure:
    return Failure(
        grpc.StatusCode.UNAVAILABLE,
        "vault is unreachable",
        reason="VAULT_UNAVAILABLE",
        retry_delay_s=delay_s,
    )


async def test_register_sends_key_and_token_and_returns_fingerprint(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    async with AsyncForwarderClient(admin_config) as client:
        response = await client.register_integration(
            "ws-1",
            KEY,
            integration_settings(click_metric_name="Clicked", backfill_after=dt.timedelta(hours=2)),
        )
    assert response.integration.key_fingerprint == "pk_…" + KEY[-4:]
    assert response.integration.settings.click_metric_name == "Clicked"
    assert response.integration.settings.backfill_after.seconds == 7200
    assert fake.servicer.requests["RegisterIntegration"][0].private_key == KEY
    assert fake.servicer.metadata[0]["authorization"] == f"Bearer {admin_config.token}"


async def test_invalid_argument_carries_violations_and_is_not_retried(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    async with AsyncForwarderClient(admin_config) as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.register_integration("ws-1", "not-a-key")
    error = caught.value
    assert fake.servicer.calls["RegisterIntegration"] == 1
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "INVALID_ARGUMENT"
    assert error.field_violations == [("private_key", "is not a Klaviyo private key (pk_...)")]
    assert "private_key" in str(error)


async def test_key_echoed_by_a_server_never_reaches_exception_text(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    fake.servicer.fail(
        "RegisterIntegration",
        Failure(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"bad key {KEY}",
            violations=[("private_key", f"{KEY} is revoked")],
        ),
    )
    async with AsyncForwarderClient(admin_config) as client:
        with pytest.raises(InvalidArgument) as caught:
            await client.register_integration("ws-1", KEY)
    error = caught.value
    for text in (str(error), repr(error), repr(error.args), repr(error.field_violations)):
        assert KEY not in text
        assert KEY[3:] not in text
    assert "pk_…" in str(error)
    # The grpc error (which holds the raw trailer) is not chained onto ours.
    assert error.__cause__ is None
    assert error.__suppress_context__


async def test_unavailable_with_retry_info_waits_the_servers_delay(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    fake.servicer.fail("RegisterIntegration", _unavailable(0.3))
    async with AsyncForwarderClient(admin_config) as client:
        started = time.monotonic()
        response = await client.register_integration("ws-1", KEY)
        elapsed = time.monotonic() - started
    assert response.integration.workspace_id == "ws-1"
    assert fake.servicer.calls["RegisterIntegration"] == 2
    assert elapsed >= 0.3


async def test_bare_unavailable_is_retried_with_backoff_up_to_the_limit(
    fake: RunningFake, ingest_config: ClientConfig
) -> None:
    fake.servicer.fail("ForwardClick", *[_unavailable()] * 10)
    click = pb.Click(click_id="c1", workspace_id="ws-1")
    async with AsyncForwarderClient(ingest_config) as client:
        with pytest.raises(Unavailable) as caught:
            await client.forward_click(click)
    assert fake.servicer.calls["ForwardClick"] == FAST_RETRY.max_attempts
    assert caught.value.reason == "VAULT_UNAVAILABLE"


async def test_retried_click_is_taken_once(fake: RunningFake, ingest_config: ClientConfig) -> None:
    fake.servicer.fail("ForwardClick", _unavailable(), _unavailable())
    click = pb.Click(click_id="c1", workspace_id="ws-1")
    async with AsyncForwarderClient(ingest_config) as client:
        response = await client.forward_click(click)
    assert response.disposition == pb.CLICK_DISPOSITION_NO_INTEGRATION
    assert fake.servicer.calls["ForwardClick"] == 3
    assert len(fake.servicer.clicks) == 1


async def test_resource_exhausted_is_retried_only_with_retry_info(
    fake: RunningFake, ingest_config: ClientConfig
) -> None:
    shed = Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", reason="RESOURCE_EXHAUSTED")
    fake.servicer.fail("ForwardClick", Failure(**{**shed.__dict__, "retry_delay_s": 0.01}))
    fake.servicer.fail("ForwardClick", shed)
    click = pb.Click(click_id="c1", workspace_id="ws-1")
    async with AsyncForwarderClient(ingest_config) as client:
        with pytest.raises(ResourceExhausted) as caught:
            await client.forward_click(click)
    assert fake.servicer.calls["ForwardClick"] == 2
    assert caught.value.retry_delay is None


async def test_retry_delay_beyond_the_deadline_fails_at_once(
    fake: RunningFake, ingest_config: ClientConfig
) -> None:
    fake.servicer.fail("ForwardClick", _unavailable(5.0))
    async with AsyncForwarderClient(ingest_config) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            await client.forward_click(pb.Click(click_id="c1", workspace_id="w"), timeout_s=1.0)
    assert time.monotonic() - started < 0.9
    assert caught.value.retry_delay == dt.timedelta(seconds=5)
    assert fake.servicer.calls["ForwardClick"] == 1


async def test_remove_is_not_retried_on_bare_unavailable(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    fake.servicer.fail("RemoveIntegration", _unavailable())
    async with AsyncForwarderClient(admin_config) as client:
        await client.register_integration("ws-1", KEY)
        with pytest.raises(Unavailable):
            await client.remove_integration("ws-1")
        assert fake.servicer.calls["RemoveIntegration"] == 1
        fake.servicer.fail("RemoveIntegration", _unavailable(0.01))
        await client.remove_integration("ws-1")
    assert fake.servicer.calls["RemoveIntegration"] == 3
    assert "ws-1" not in fake.servicer.integrations


async def test_a_key_check_is_retried_but_not_one_sending_a_test_event(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    fake.servicer.fail("VerifyIntegrationKey", _unavailable())
    async with AsyncForwarderClient(admin_config) as client:
        checked = await client.verify_integration_key("ws-1")
        assert checked.verdict == pb.KEY_CHECK_VERDICT_VALID
        assert fake.servicer.calls["VerifyIntegrationKey"] == 2  # retried: it changes nothing
        fake.servicer.fail("VerifyIntegrationKey", _unavailable())
        with pytest.raises(Unavailable):
            # A retry could send a second test event.
            await client.verify_integration_key(
                "ws-1", pb.ProfileIdentifiers(email="owner@example.com")
            )
    assert fake.servicer.calls["VerifyIntegrationKey"] == 3
    sent = fake.servicer.requests["VerifyIntegrationKey"][-1]
    assert sent.test_event_profile.email == "owner@example.com"


async def test_not_found_and_auth_errors_map_to_their_classes(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    async with AsyncForwarderClient(admin_config) as client:
        with pytest.raises(NotFound) as not_found:
            await client.get_integration("nope")
    assert not_found.value.reason == "INTEGRATION_NOT_FOUND"
    bad = ClientConfig(target=fake.target, token="wrong", retry=FAST_RETRY)
    async with AsyncForwarderClient(bad) as client:
        with pytest.raises(Unauthenticated):
            await client.list_integrations()
    ingest = ClientConfig(target=fake.target, token=INGEST_TOKEN, retry=FAST_RETRY)
    async with AsyncForwarderClient(ingest) as client:
        with pytest.raises(PermissionDenied):
            await client.list_integrations()
    assert fake.servicer.calls["ListIntegrations"] == 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_server_raises_unavailable_quickly() -> None:
    config = ClientConfig(
        target=f"127.0.0.1:{_closed_port()}",
        token="t",
        retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01),
    )
    async with AsyncForwarderClient(config) as client:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await client.get_integration("ws-1")
    assert time.monotonic() - started < 5


async def test_iter_integrations_walks_every_page(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    async with AsyncForwarderClient(admin_config) as client:
        for index in range(5):
            await client.register_integration(f"ws-{index}", KEY)
        seen = [i.workspace_id async for i in client.iter_integrations(page_size=2)]
    assert seen == [f"ws-{index}" for index in range(5)]
    assert fake.servicer.calls["ListIntegrations"] == 3


async def test_conversions_failed_events_rewrap_and_health(
    fake: RunningFake, admin_config: ClientConfig, ingest_config: ClientConfig
) -> None:
    fake.servicer.failed["ws-1"] = [
        pb.FailedEvent(event_id=f"e{n}", workspace_id="ws-1", kind=pb.EVENT_KIND_CLICK)
        for n in range(3)
    ]
    async with AsyncForwarderClient(admin_config) as admin:
        await admin.register_integration("ws-1", KEY)
        assert [e.event_id async for e in admin.iter_failed_events("ws-1", page_size=2)] == [
            "e0",
            "e1",
            "e2",
        ]
        assert (await admin.replay_failed_events("ws-1", ["e1"])).replayed_count == 1
        assert (await admin.replay_failed_events("ws-1", all_events=True)).replayed_count == 2
        assert (await admin.rewrap_keys()).rewrapped_count == 1
        assert await admin.check_health() == 1  # SERVING
    async with AsyncForwarderClient(ingest_config) as ingest:
        await ingest.forward_click(
            pb.Click(
                click_id="c1",
                workspace_id="ws-1",
                identifiers=pb.ProfileIdentifiers(email="a@b.co"),
            )
        )
        response = await ingest.forward_conversion(
            pb.Conversion(
                conversion_id="o1", workspace_id="ws-1", click_id="c1", value=9.5, currency="EUR"
            )
        )
        assert response.disposition == pb.CONVERSION_DISPOSITION_QUEUED
        with pytest.raises(InvalidArgument) as caught:
            await ingest.forward_conversion(
                pb.Conversion(conversion_id="o2", workspace_id="ws-1", value=1.0)
            )
    assert caught.value.field_violations == [
        ("conversion.currency", "is required when value is set")
    ]


async def test_sync_client_retries_and_maps_errors(
    fake: RunningFake, admin_config: ClientConfig
) -> None:
    fake.servicer.fail("RegisterIntegration", _unavailable(0.01))

    def scenario() -> tuple[pb.RegisterIntegrationResponse, NotFound, list[str]]:
        with ForwarderClient(admin_config) as client:
            registered = client.register_integration("ws-1", KEY)
            try:
                client.remove_integration("ws-2")
            except NotFound as exc:
                missing = exc
            listed = [i.workspace_id for i in client.iter_integrations()]
            return registered, missing, listed

    # The server runs on this event loop; the blocking client must run beside it.
    registered, missing, listed = await asyncio.to_thread(scenario)
    assert registered.integration.key_fingerprint.endswith(KEY[-4:])
    assert fake.servicer.calls["RegisterIntegration"] == 2
    assert missing.reason == "INTEGRATION_NOT_FOUND"
    assert listed == ["ws-1"]
