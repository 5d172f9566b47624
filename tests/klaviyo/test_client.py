"""The client sends the documented request and classifies every kind of answer; no key leaks."""

from __future__ import annotations

import json
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from structlog.testing import capture_logs

from server._secret import PrivateKey
from server.delivery._klaviyo import (
    KlaviyoClient,
    KlaviyoConfig,
    KlaviyoResult,
    Outcome,
    parse_retry_after,
)
from server.delivery._payloads import build_bulk_job, build_event
from server.store._records import IntegrationSettings
from tests.klaviyo._events import T0, click
from tests.klaviyo_mock import Fault, FaultKind, KlaviyoMock, WindowLimit
from tests.support.klaviyo import TEST_KEY
from tests.support.klaviyo_spec import validate_bulk_job, validate_event_create

KEY = PrivateKey(TEST_KEY)
WRONG_KEY = PrivateKey("pk_" + "W" * 30 + "0000")
BODY = build_event(click(), IntegrationSettings(), T0 + 60)


async def test_sends_the_four_headers_and_a_compact_body(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    result = await client.create_event(KEY, BODY)
    assert result.outcome is Outcome.ACCEPTED
    assert result.status_code == 202
    assert result.rate_limit is not None
    assert (result.rate_limit.limit, result.rate_limit.remaining) == (3500, 3499)
    [request] = klaviyo_mock.requests
    assert (request.method, request.path) == ("POST", "/api/events")
    assert request.header("Authorization") == f"Klaviyo-API-Key {TEST_KEY}"
    assert request.header("revision") == "2026-07-15"
    assert request.header("Content-Type") == "application/vnd.api+json"
    assert request.header("Accept") == "application/vnd.api+json"
    assert request.body == json.dumps(BODY, separators=(",", ":")).encode()
    validate_event_create(request.json)


async def test_bulk_job_goes_to_the_bulk_endpoint(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    body = build_bulk_job([click("a"), click("b")], IntegrationSettings(), T0 + 60)
    result = await client.create_bulk_job(KEY, body)
    assert result.outcome is Outcome.ACCEPTED
    [request] = klaviyo_mock.requests
    assert request.path == "/api/event-bulk-create-jobs"
    validate_bulk_job(request.json)
    assert [e.unique_id for e in klaviyo_mock.timeline()] == ["a", "b"]


async def test_429_retry_after_from_header_then_from_text(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    klaviyo_mock.set_limits(events=WindowLimit(5, 2))
    await client.create_event(KEY, BODY)
    await client.create_event(KEY, BODY)  # fills the steady window: next in ~60 s
    with_header = await client.create_event(KEY, BODY)
    klaviyo_mock.set_limits(retry_after_header=False, events=WindowLimit(5, 2))
    from_text = await client.create_event(KEY, BODY)
    assert with_header.outcome is Outcome.RATE_LIMITED
    assert with_header.retry_after_s is not None
    assert 58 <= with_header.retry_after_s <= 60
    assert from_text.outcome is Outcome.RATE_LIMITED
    assert from_text.retry_after_s is not None
    assert 58 <= from_text.retry_after_s <= 60
    assert "throttled" in from_text.detail


async def test_429_without_any_hint_has_no_retry_after(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    klaviyo_mock.inject(Fault(FaultKind.STATUS, status=429, body="Slow down."))
    result = await client.create_event(KEY, BODY)
    assert (result.outcome, result.retry_after_s) == (Outcome.RATE_LIMITED, None)


async def test_wrong_key_and_missing_scope_are_key_rejected(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    klaviyo_mock.add_key("pk_noscopenoscopenoscope01", scopes=())
    wrong = await client.create_event(WRONG_KEY, BODY)
    no_scope = await client.create_event(PrivateKey("pk_noscopenoscopenoscope01"), BODY)
    assert (wrong.outcome, wrong.status_code) == (Outcome.KEY_REJECTED, 401)
    assert "not_authenticated" in wrong.detail
    assert (no_scope.outcome, no_scope.status_code) == (Outcome.KEY_REJECTED, 403)


async def test_invalid_payload_detail_names_code_and_pointer(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    body = build_event(click(), IntegrationSettings(), T0 + 60)
    body["data"]["attributes"]["time"] = "1999-01-01T00:00:00+00:00"
    result = await client.create_event(KEY, body)
    assert (result.outcome, result.status_code) == (Outcome.INVALID, 400)
    assert "invalid" in result.detail
    assert "/data/attributes/time" in result.detail


@pytest.mark.parametrize(
    ("fault", "outcome", "status"),
    [
        (Fault(FaultKind.STATUS, status=500), Outcome.TRANSIENT, 500),
        (Fault(FaultKind.STATUS, status=503), Outcome.TRANSIENT, 503),
        (Fault(FaultKind.STATUS, status=504), Outcome.TRANSIENT, 504),
        (Fault(FaultKind.HANG), Outcome.TRANSIENT, None),
        (Fault(FaultKind.DROP), Outcome.TRANSIENT, None),
        # A CDN's HTML 403 is not Klaviyo rejecting the key: retry rather than hold the workspace.
        (Fault(FaultKind.HTML, status=403), Outcome.TRANSIENT, 403),
        (Fault(FaultKind.HTML, status=400), Outcome.INVALID, 400),
        (Fault(FaultKind.HTML, status=502), Outcome.TRANSIENT, 502),
    ],
)
async def test_faults_are_classified(
    klaviyo_mock: KlaviyoMock,
    client: KlaviyoClient,
    fault: Fault,
    outcome: Outcome,
    status: int | None,
) -> None:
    klaviyo_mock.inject(fault)
    result = await client.create_event(KEY, BODY)
    assert (result.outcome, result.status_code) == (outcome, status)
    assert result.detail
    if fault.kind is FaultKind.HTML:
        assert "text/html" in result.detail
        assert "<" not in result.detail


async def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = KlaviyoClient(KlaviyoConfig(base_url=f"http://127.0.0.1:{port}", timeout_s=1))
    try:
        result = await client.create_event(KEY, BODY)
    finally:
        await client.aclose()
    assert (result.outcome, result.status_code) == (Outcome.TRANSIENT, None)
    assert "connection failed" in result.detail


async def test_check_key_tells_wrong_from_valid(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    assert (await client.check_key(KEY)).outcome is Outcome.ACCEPTED  # 403: valid, no read
    assert (await client.check_key(WRONG_KEY)).outcome is Outcome.KEY_REJECTED


async def test_the_key_never_reaches_logs_details_or_reprs(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    raw_wrong, raw_good = WRONG_KEY.reveal(), KEY.reveal()
    # A proxy page that echoes the Authorization header back, the worst case.
    klaviyo_mock.inject(
        Fault(FaultKind.HTML, status=400, body=f"<p>Bad header: Klaviyo-API-Key {raw_good}</p>")
    )
    klaviyo_mock.inject(Fault(FaultKind.DROP, count=1))
    results: list[KlaviyoResult] = []
    with capture_logs() as logs:
        results.append(await client.create_event(KEY, BODY))
        results.append(await client.create_event(KEY, BODY))
        results.append(await client.create_event(WRONG_KEY, BODY))
        results.append(await client.check_key(WRONG_KEY))
    assert [r.outcome for r in results] == [
        Outcome.INVALID,
        Outcome.TRANSIENT,
        Outcome.KEY_REJECTED,
        Outcome.KEY_REJECTED,
    ]
    assert KEY.fingerprint in results[0].detail  # scrubbed to the fingerprint
    text = repr(results) + repr(logs) + "".join(r.detail for r in results)
    assert logs, "failures should be logged"
    assert raw_good not in text
    assert raw_wrong not in text


def test_retry_after_parsing() -> None:
    now = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


async def test_probe_tells_unknown_key_missing_scope_and_valid_key_apart_writing_nothing(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    from server.delivery._klaviyo import PROBE_BODY, KeyVerdict

    no_write = PrivateKey("pk_profilesonlyprofilesonly01")
    klaviyo_mock.add_key(no_write.reveal(), "acct", scopes={"profiles:write", "profiles:read"})
    valid = await client.probe_key(KEY)
    unknown = await client.probe_key(WRONG_KEY)
    scope = await client.probe_key(no_write)
    assert (valid.verdict, valid.status_code) == (KeyVerdict.VALID, 400)
    assert (unknown.verdict, unknown.status_code) == (KeyVerdict.UNKNOWN_KEY, 401)
    assert "not_authenticated" in unknown.detail
    assert (scope.verdict, scope.status_code) == (KeyVerdict.SCOPE_MISSING, 403)
    assert [(r.path, r.json) for r in klaviyo_mock.requests] == [("/api/events", PROBE_BODY)] * 3
    assert klaviyo_mock.received() == []


@pytest.mark.parametrize(
    "fault",
    [
        Fault(FaultKind.STATUS, status=503),
        Fault(FaultKind.STATUS, status=429, body="Slow down."),
        Fault(FaultKind.HTML, status=403),  # a CDN's challenge page, not Klaviyo's judgement
        Fault(FaultKind.HTML, status=401),
        Fault(FaultKind.STATUS, status=404),
        Fault(FaultKind.DROP),
    ],
    ids=["503", "429", "cdn-403", "cdn-401", "404", "dropped"],
)
async def test_probe_is_inconclusive_when_klaviyo_says_nothing_about_the_key(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient, fault: Fault
) -> None:
    from server.delivery._klaviyo import KeyVerdict

    klaviyo_mock.inject(fault)
    check = await client.probe_key(KEY)
    assert check.verdict is KeyVerdict.INCONCLUSIVE
    assert KEY.reveal() not in check.detail


async def test_probe_of_an_unreachable_klaviyo_is_inconclusive_and_quick() -> None:
    from server.delivery._klaviyo import KeyVerdict

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = KlaviyoClient(KlaviyoConfig(base_url=f"http://127.0.0.1:{port}"))
    try:
        check = await client.probe_key(KEY)
    finally:
        await client.aclose()
    assert (check.verdict, check.status_code) == (KeyVerdict.INCONCLUSIVE, None)
    assert "connection failed" in check.detail


async def test_probe_never_leaks_the_key_even_from_an_echoing_proxy(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    raw = KEY.reveal()
    klaviyo_mock.inject(
        Fault(FaultKind.HTML, status=502, body=f"<p>Bad header: Klaviyo-API-Key {raw}</p>")
    )
    with capture_logs() as logs:
        check = await client.probe_key(KEY)
    assert KEY.fingerprint in check.detail
    assert raw not in check.detail + repr(check) + repr(logs)


def test_the_test_event_is_a_valid_create_event_body() -> None:
    from server.delivery._payloads import TEST_EVENT_METRIC, build_test_event
    from server.store._records import Identifiers

    body = build_test_event(
        Identifiers(email="owner@example.com", phone_number="+14155550100"), "elido-test-1", T0
    )
    validate_event_create(body)
    attributes = body["data"]["attributes"]
    assert attributes["metric"]["data"]["attributes"]["name"] == TEST_EVENT_METRIC
    assert (attributes["backfill"], attributes["unique_id"]) == (False, "elido-test-1")
