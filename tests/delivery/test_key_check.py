"""Issue 11 section 1: a wrong key is caught when it is pasted, not hours later.

Against a real forwarder process (real gRPC, real OpenBao, SQLite and PostgreSQL) and the
Klaviyo mock, which answers like Klaviyo documents: the key first (401), then the scope
(403), then the body (400).
"""

from __future__ import annotations

import grpc
import hvac.exceptions
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.core.test_intake import details
from tests.klaviyo_mock import PROFILES_WRITE, Fault, FaultKind, KlaviyoMockThread
from tests.support.calls import forward, integration, make_click, new_key, register, wait_for
from tests.support.forwarder import BACKENDS, ForwarderProcess
from tests.support.klaviyo_spec import schema_errors, validate_schema
from tests.support.openbao import VaultFixture, new_workspace_id

ON_EVERY_BACKEND = pytest.mark.parametrize("store_backend", BACKENDS)


def transit_key_exists(openbao: VaultFixture, ws: str) -> bool:
    try:
        openbao.root_client().secrets.transit.read_key(f"elido-ws-{ws}", mount_point="transit")
    except hvac.exceptions.InvalidPath:
        return False
    return True


def probes(mock: KlaviyoMockThread) -> list[tuple[int, object]]:
    return [(r.status, r.json) for r in mock.requests if r.path == "/api/events"]


def refused_registration(fwd: ForwarderProcess, ws: str, key: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        register(fwd, ws, key)
    return caught.value


def verify(
    fwd: ForwarderProcess, ws: str, profile: pb.ProfileIdentifiers | None = None
) -> pb.VerifyIntegrationKeyResponse:
    request = pb.VerifyIntegrationKeyRequest(workspace_id=ws)
    if profile is not None:
        request.test_event_profile.CopyFrom(profile)
    return fwd.stub().VerifyIntegrationKey(request, metadata=fwd.admin())  # type: ignore[no-any-return]


def test_the_probe_body_is_one_klaviyo_must_refuse() -> None:
    from server.delivery._klaviyo import PROBE_BODY

    # The probe writes nothing only because Klaviyo's own schema refuses it: no metric, no
    # profile, both required.
    errors = schema_errors("EventCreateQueryV2", PROBE_BODY)
    assert any("'metric' is a required property" in e for e in errors), errors
    assert any("'profile' is a required property" in e for e in errors), errors


@ON_EVERY_BACKEND
def test_an_unknown_key_is_refused_at_once_and_nothing_is_stored(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
    openbao: VaultFixture,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    ws, key = new_workspace_id(), new_key()
    error = refused_registration(fwd, ws, key)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, violations = details(error)
    assert reason == "KEY_REJECTED"
    assert [field for field, _ in violations] == ["private_key"]
    assert key not in str(error.details())
    assert key not in str(violations)
    assert probes(klaviyo_mock_thread) == [
        (401, {"data": {"type": "event", "attributes": {"properties": {}}}})
    ]
    assert fwd.database.value("SELECT count(*) FROM integrations") == 0
    assert not transit_key_exists(openbao, ws), "a refused key left a transit key in Vault"
    assert klaviyo_mock_thread.timeline() == []


@ON_EVERY_BACKEND
def test_a_key_without_events_write_is_refused_with_its_own_reason(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
    openbao: VaultFixture,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    ws, key = new_workspace_id(), new_key()
    klaviyo_mock_thread.add_key(key, "acct-scopes", scopes={PROFILES_WRITE})
    error = refused_registration(fwd, ws, key)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(error)[0] == "KEY_SCOPE_MISSING"
    assert "events:write" in str(error.details())
    assert [status for status, _ in probes(klaviyo_mock_thread)] == [403]
    assert fwd.database.value("SELECT count(*) FROM integrations") == 0
    assert not transit_key_exists(openbao, ws)


def test_a_valid_key_is_active_and_the_check_wrote_nothing(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    ws, key = new_workspace_id(), new_key()
    klaviyo_mock_thread.add_key(key, "acct-valid")
    stored = register(fwd, ws, key)
    assert stored.state == pb.INTEGRATION_STATE_ACTIVE
    assert stored.state_reason == ""
    assert [status for status, _ in probes(klaviyo_mock_thread)] == [400]
    assert klaviyo_mock_thread.received("acct-valid") == []


@ON_EVERY_BACKEND
def test_klaviyo_unreachable_at_registration_stores_unverified_and_delivery_settles_it(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    good, revoked = new_key(), new_key()
    ws_good, ws_revoked = new_workspace_id(), new_workspace_id()
    klaviyo_mock_thread.add_key(good, "acct-unverified")
    klaviyo_mock_thread.add_key(revoked, "acct-revoked")
    # The probe's connection is dropped, then a 503: Klaviyo cannot be asked.
    klaviyo_mock_thread.inject(Fault(FaultKind.DROP, count=1))
    first = register(fwd, ws_good, good)
    klaviyo_mock_thread.inject(Fault(FaultKind.STATUS, status=503, count=1))
    second = register(fwd, ws_revoked, revoked)
    for stored in (first, second):
        assert stored.state == pb.INTEGRATION_STATE_UNVERIFIED
        assert "first delivery settles it" in stored.state_reason
    listed = fwd.stub().ListIntegrations(pb.ListIntegrationsRequest(), metadata=fwd.admin())
    assert {i.state for i in listed.integrations} == {pb.INTEGRATION_STATE_UNVERIFIED}

    # The first delivery settles both: 202 -> active; 401 (revoked meanwhile) -> key rejected.
    klaviyo_mock_thread.remove_key(revoked)
    forward(fwd, [make_click(ws_good, "u-1", email="u@example.com")])
    forward(fwd, [make_click(ws_revoked, "u-2", email="u@example.com")])
    wait_for(lambda: integration(fwd, ws_good).state == pb.INTEGRATION_STATE_ACTIVE, what="active")
    assert [e.unique_id for e in klaviyo_mock_thread.timeline("acct-unverified")] == ["u-1"]
    assert integration(fwd, ws_good).state_reason == ""
    wait_for(
        lambda: integration(fwd, ws_revoked).state == pb.INTEGRATION_STATE_KEY_REJECTED,
        what="key rejected",
    )
    assert integration(fwd, ws_revoked).delivery.queued_count == 1


@ON_EVERY_BACKEND
def test_recheck_after_scopes_fixed_resumes_held_events_and_sends_a_test_event(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    ws, key = new_workspace_id(), new_key()
    klaviyo_mock_thread.add_key(key, "acct-fix")
    register(fwd, ws, key)
    # The owner narrows the key's scopes in Klaviyo; a re-check notices.
    klaviyo_mock_thread.add_key(key, "acct-fix", scopes={PROFILES_WRITE})
    checked = verify(fwd, ws)
    assert checked.verdict == pb.KEY_CHECK_VERDICT_SCOPE_MISSING
    assert checked.integration.state == pb.INTEGRATION_STATE_KEY_REJECTED
    assert "events:write" in checked.integration.state_reason
    assert not checked.HasField("test_event")
    forward(fwd, [make_click(ws, "held-1", email="held@example.com")])
    assert integration(fwd, ws).delivery.queued_count == 1

    # Scopes fixed: the re-check makes it active, held events go, the test event arrives.
    klaviyo_mock_thread.add_key(key, "acct-fix")
    profile = pb.ProfileIdentifiers(email="owner@example.com")
    fixed = verify(fwd, ws, profile)
    assert fixed.verdict == pb.KEY_CHECK_VERDICT_VALID
    assert fixed.integration.state == pb.INTEGRATION_STATE_ACTIVE
    assert fixed.test_event.accepted, fixed.test_event.detail
    assert fixed.test_event.unique_id.startswith("elido-test-")
    wait_for(
        lambda: (
            {e.unique_id for e in klaviyo_mock_thread.timeline("acct-fix")}
            == {"held-1", fixed.test_event.unique_id}
        ),
        what="held event and test event on the timeline",
    )
    test_event = next(
        e for e in klaviyo_mock_thread.timeline("acct-fix") if e.metric == "Elido Test Event"
    )
    assert test_event.profile == {"email": "owner@example.com"}
    assert test_event.backfill is False
    sent = [
        r.json for r in klaviyo_mock_thread.requests if r.path == "/api/events" and r.status == 202
    ]
    for body in sent:
        validate_schema("EventCreateQueryV2", body)
    # A second test is a second entry on the timeline, not a silent duplicate.
    again = verify(fwd, ws, profile)
    assert again.test_event.unique_id != fixed.test_event.unique_id
    wait_for(
        lambda: (
            sum(e.metric == "Elido Test Event" for e in klaviyo_mock_thread.timeline("acct-fix"))
            == 2
        ),
        what="two test events",
    )


def test_recheck_of_a_key_klaviyo_no_longer_knows_and_when_klaviyo_is_down(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    ws, key = new_workspace_id(), new_key()
    klaviyo_mock_thread.add_key(key, "acct-gone")
    register(fwd, ws, key)
    klaviyo_mock_thread.inject(Fault(FaultKind.STATUS, status=500, count=1))
    down = verify(fwd, ws, pb.ProfileIdentifiers(email="o@example.com"))
    assert down.verdict == pb.KEY_CHECK_VERDICT_INCONCLUSIVE
    assert down.integration.state == pb.INTEGRATION_STATE_ACTIVE  # unchanged
    assert not down.HasField("test_event")  # no test event after a check that proved nothing
    klaviyo_mock_thread.remove_key(key)
    gone = verify(fwd, ws, pb.ProfileIdentifiers(email="o@example.com"))
    assert gone.verdict == pb.KEY_CHECK_VERDICT_KEY_REJECTED
    assert gone.integration.state == pb.INTEGRATION_STATE_KEY_REJECTED
    assert "401" in gone.integration.state_reason
    assert key not in str(gone)
    assert key not in fwd.logs()
    assert klaviyo_mock_thread.timeline("acct-gone") == []


def test_verify_validates_its_input_and_needs_the_admin_role(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    ws, key = new_workspace_id(), new_key()
    klaviyo_mock_thread.add_key(key, "acct-input")
    register(fwd, ws, key)
    before = len(klaviyo_mock_thread.requests)
    stub = fwd.stub()
    cases = [
        (pb.VerifyIntegrationKeyRequest(workspace_id="bad ws"), ["workspace_id"]),
        (
            pb.VerifyIntegrationKeyRequest(
                workspace_id=ws, test_event_profile=pb.ProfileIdentifiers()
            ),
            ["test_event_profile"],
        ),
        (
            pb.VerifyIntegrationKeyRequest(
                workspace_id=ws,
                test_event_profile=pb.ProfileIdentifiers(
                    email="secret-person.example.com", phone_number="5550100-secret"
                ),
            ),
            ["test_event_profile.email", "test_event_profile.phone_number"],
        ),
        (
            pb.VerifyIntegrationKeyRequest(
                workspace_id=ws,
                test_event_profile=pb.ProfileIdentifiers(kx="abc.secret"),
            ),
            ["test_event_profile.kx", "test_event_profile"],
        ),
    ]
    for request, fields in cases:
        with pytest.raises(grpc.RpcError) as caught:
            stub.VerifyIntegrationKey(request, metadata=fwd.admin())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        reason, violations = details(caught.value)
        assert reason == "INVALID_ARGUMENT"
        assert sorted(field for field, _ in violations) == sorted(fields)
        assert "secret" not in str(caught.value.details()) + str(violations)
    with pytest.raises(grpc.RpcError) as caught:
        stub.VerifyIntegrationKey(
            pb.VerifyIntegrationKeyRequest(workspace_id=new_workspace_id()), metadata=fwd.admin()
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        stub.VerifyIntegrationKey(
            pb.VerifyIntegrationKeyRequest(workspace_id=ws), metadata=fwd.ingest()
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(klaviyo_mock_thread.requests) == before, "a refused call reached Klaviyo"
    assert integration(fwd, ws).state == pb.INTEGRATION_STATE_ACTIVE
