"""The audit trail end to end: every admin action recorded with the caller's identity and
its outcome, listed through gRPC and ``elido-fwd audit list``, on both store backends; the
raw key and erased identifiers never in it (nor in the logs or the store files)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path
from typing import Any

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc
from google.protobuf import json_format

from tests.klaviyo_mock import KlaviyoMockThread
from tests.privacy.test_erasure import _cli, _store_bytes
from tests.support.calls import forward, make_click, new_key, register, rpc_code
from tests.support.forwarder import BACKENDS, ForwarderProcess
from tests.support.openbao import new_workspace_id

ON_EVERY_BACKEND = pytest.mark.parametrize("store_backend", BACKENDS)
ERASED = "Audit.Subject-90d1@Example.net"


def _entries(fwd: ForwarderProcess, **filters: Any) -> list[pb.AuditEvent]:
    out: list[pb.AuditEvent] = []
    token = ""
    while True:
        page = fwd.stub().ListAuditEvents(
            pb.ListAuditEventsRequest(page_size=2, page_token=token, **filters),
            metadata=fwd.admin(),
        )
        out.extend(page.audit_events)
        token = page.next_page_token
        if not token:
            return out


@ON_EVERY_BACKEND
def test_every_admin_action_is_audited_with_its_caller_and_outcome(
    forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread, tmp_path: Path
) -> None:
    hmac_key = secrets.token_hex(32)
    key_file = tmp_path / "audit.key"
    key_file.write_text(hmac_key + "\n")
    fwd: ForwarderProcess = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url,
        env={"FORWARDER_AUDIT_HMAC_KEY_FILE": str(key_file)},
    )
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-audit")  # the registration checks it with Klaviyo
    stub = fwd.stub()
    fingerprint = register(fwd, ws, key).key_fingerprint
    forward(fwd, [make_click(ws, "a-1", email=ERASED)])
    checked = stub.VerifyIntegrationKey(
        pb.VerifyIntegrationKeyRequest(
            workspace_id=ws, test_event_profile=pb.ProfileIdentifiers(email=ERASED)
        ),
        metadata=fwd.admin(),
    )
    stub.ReplayFailedEvents(
        pb.ReplayFailedEventsRequest(workspace_id=ws, kind=pb.EVENT_KIND_CLICK, dry_run=True),
        metadata=fwd.admin(),
    )
    stub.RewrapKeys(pb.RewrapKeysRequest(workspace_id=ws), metadata=fwd.admin())
    erase = _cli(
        fwd, tmp_path, "erase", "--workspace", ws, "--identifiers-file", "-",
        stdin=f"email:{ERASED}\n",
    )  # fmt: skip
    assert erase.returncode == 0, erase.stderr
    missing = new_workspace_id()
    assert (
        rpc_code(
            lambda: stub.RemoveIntegration(
                pb.RemoveIntegrationRequest(workspace_id=missing), metadata=fwd.admin()
            )
        )
        == grpc.StatusCode.NOT_FOUND
    )
    stub.RemoveIntegration(pb.RemoveIntegrationRequest(workspace_id=ws), metadata=fwd.admin())

    entries = _entries(fwd)  # pages of two, newest first
    assert [(pb.AuditAction.Name(e.action), e.workspace_id, e.outcome) for e in entries] == [
        ("AUDIT_ACTION_REMOVE", ws, "OK"),
        ("AUDIT_ACTION_REMOVE", missing, "INTEGRATION_NOT_FOUND"),
        ("AUDIT_ACTION_ERASE", ws, "OK"),
        ("AUDIT_ACTION_REWRAP", ws, "OK"),
        ("AUDIT_ACTION_REPLAY", ws, "OK"),
        ("AUDIT_ACTION_KEY_RECHECK", ws, "OK"),
        ("AUDIT_ACTION_REGISTER", ws, "OK"),
    ]
    for e in entries:
        assert (e.caller.token_name, list(e.caller.roles)) == ("test-admin", ["admin"])
        assert e.time.seconds > 0
    details = [json_format.MessageToDict(e.details) for e in entries]
    assert details[6]["key_fingerprint"] == fingerprint
    assert details[6]["replaced"] is False
    assert details[6]["key_check"] == "valid"
    assert details[5]["verdict"] == "KEY_CHECK_VERDICT_VALID"
    assert details[5]["key_fingerprint"] == fingerprint
    assert details[5]["test_event_unique_id"] == checked.test_event.unique_id
    assert ERASED not in str(details[5])  # the test event's profile is not in the log
    assert details[4]["dry_run"] is True
    assert details[4]["kind"] == "EVENT_KIND_CLICK"
    assert details[0]["dropped_event_count"] == 0
    expected = hmac.new(
        hmac_key.encode(), f"email:{ERASED.lower()}".encode(), hashlib.sha256
    ).hexdigest()
    assert details[2]["identifier_hashes"] == [f"hmac-sha256:{expected}"]
    assert details[2]["erased_click_count"] == 1
    assert details[2]["identifier_counts"]["emails"] == 1

    # Filters: by workspace, by time; a token only with the filters it was made for.
    assert [e.outcome for e in _entries(fwd, workspace_id=missing)] == ["INTEGRATION_NOT_FOUND"]
    first = fwd.stub().ListAuditEvents(pb.ListAuditEventsRequest(page_size=1), metadata=fwd.admin())
    assert (
        rpc_code(
            lambda: stub.ListAuditEvents(
                pb.ListAuditEventsRequest(
                    workspace_id=ws, page_size=1, page_token=first.next_page_token
                ),
                metadata=fwd.admin(),
            )
        )
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    later = pb.ListAuditEventsRequest()
    later.start_time.CopyFrom(entries[0].time)
    assert [e.audit_id for e in _entries(fwd, start_time=later.start_time)] == [entries[0].audit_id]
    assert (
        rpc_code(lambda: stub.ListAuditEvents(pb.ListAuditEventsRequest(), metadata=fwd.ingest()))
        == grpc.StatusCode.PERMISSION_DENIED
    )

    # The CLI: a table and JSON.
    table = _cli(fwd, tmp_path, "audit", "list", "--workspace", ws)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ACTION", "WORKSPACE", "CALLER", "OUTCOME", "DETAILS"]
    assert [line.split()[2] for line in lines[1:]] == [
        "remove", "erase", "rewrap", "replay", "key", "register",
    ]  # fmt: skip
    assert " key recheck " in lines[5]
    assert all("test-admin" in line for line in lines[1:])
    as_json = _cli(fwd, tmp_path, "--json", "audit", "list", "--limit", "2")
    assert [e["action"] for e in json.loads(as_json.stdout)["audit_events"]] == [
        "AUDIT_ACTION_REMOVE",
        "AUDIT_ACTION_REMOVE",
    ]

    # Neither the key nor the erased identifier anywhere.
    listing = str(entries) + table.stdout + as_json.stdout
    logs = fwd.logs()
    for text in (listing, logs, erase.stdout, erase.stderr):
        assert key not in text
        assert ERASED.lower() not in text.lower()
    assert hmac_key not in logs
    if fwd.database.sqlite_path is not None:
        stored = _store_bytes(fwd)
        assert key.encode() not in stored
        assert ERASED.lower().encode() not in stored.lower()
        assert hmac_key.encode() not in stored


def test_the_mtls_client_identity_is_recorded(forwarder_factory: Any, pki: Path) -> None:
    fwd: ForwarderProcess = forwarder_factory(
        env={
            "FORWARDER_TLS_CERT": str(pki / "server.pem"),
            "FORWARDER_TLS_KEY": str(pki / "server.key"),
            "FORWARDER_TLS_CLIENT_CA": str(pki / "ca.pem"),
        }
    )
    credentials = grpc.ssl_channel_credentials(
        (pki / "ca.pem").read_bytes(),
        (pki / "client.key").read_bytes(),
        (pki / "client.pem").read_bytes(),
    )
    with grpc.secure_channel(f"localhost:{fwd.port}", credentials) as channel:
        stub = pb_grpc.ForwarderServiceStub(channel)
        stub.RewrapKeys(pb.RewrapKeysRequest(), metadata=fwd.admin(), timeout=10)
        [entry] = stub.ListAuditEvents(
            pb.ListAuditEventsRequest(), metadata=fwd.admin(), timeout=10
        ).audit_events
    assert entry.action == pb.AUDIT_ACTION_REWRAP
    assert entry.workspace_id == ""  # every workspace
    assert (entry.caller.token_name, entry.caller.client_identity) == ("test-admin", "client")


def test_an_unset_hmac_key_records_counts_only_and_a_short_key_is_refused(
    forwarder_factory: Any, tmp_path: Path
) -> None:
    fwd: ForwarderProcess = forwarder_factory()
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    fwd.stub().ErasePersonalData(
        pb.ErasePersonalDataRequest(workspace_id=ws, emails=[ERASED]), metadata=fwd.admin()
    )
    [entry] = (
        fwd.stub()
        .ListAuditEvents(
            pb.ListAuditEventsRequest(workspace_id=ws, page_size=1), metadata=fwd.admin()
        )
        .audit_events
    )
    details = json_format.MessageToDict(entry.details)
    assert "identifier_hashes" not in details
    assert details["identifier_counts"]["emails"] == 1
    with pytest.raises(RuntimeError, match="FORWARDER_AUDIT_HMAC_KEY must be at least 32"):
        forwarder_factory(env={"FORWARDER_AUDIT_HMAC_KEY": "short"})
