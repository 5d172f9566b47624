"""Klaviyo keys: encrypted at once, never anywhere in the clear, shredded on removal."""

from __future__ import annotations

from pathlib import Path

import grpc
import hvac.exceptions
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.core.test_intake import details
from tests.klaviyo_mock import KlaviyoMockThread
from tests.support.calls import forward, integration, make_click, new_key, register, wait_for
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import VaultFixture, new_workspace_id


def stored_ciphertext(fwd: ForwarderProcess, ws: str) -> str:
    return str(fwd.database.value("SELECT ciphertext FROM integrations WHERE workspace_id=?", ws))


def all_bytes_under(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in path.rglob("*") if p.is_file())


def test_raw_key_is_nowhere_on_disk_in_logs_responses_or_errors(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, rejected, ws = new_key(), new_key(), new_workspace_id()
    unknown, scopeless = new_key(), new_key()
    klaviyo_mock_thread.add_key(key, "acct-secret")
    stub = fwd.stub()
    responses = [
        stub.RegisterIntegration(
            pb.RegisterIntegrationRequest(workspace_id=ws, private_key=key), metadata=fwd.admin()
        ),
        stub.GetIntegration(pb.GetIntegrationRequest(workspace_id=ws), metadata=fwd.admin()),
        stub.ListIntegrations(pb.ListIntegrationsRequest(), metadata=fwd.admin()),
    ]
    forward(fwd, [make_click(ws, "k-1", email="k@example.com")])
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-secret")) == 1, what="delivery with the key"
    )
    # A key Klaviyo rejects goes through the error paths (401 detail, state reason, logs).
    ws2 = new_workspace_id()
    klaviyo_mock_thread.add_key(rejected, "acct-revoked")
    register(fwd, ws2, rejected)
    klaviyo_mock_thread.remove_key(rejected)  # revoked after registration
    forward(fwd, [make_click(ws2, "k-2", email="k@example.com")])
    wait_for(
        lambda: integration(fwd, ws2).state == pb.INTEGRATION_STATE_KEY_REJECTED, what="rejection"
    )
    responses.append(
        stub.GetIntegration(pb.GetIntegrationRequest(workspace_id=ws2), metadata=fwd.admin())
    )
    # The key check (issue 11): its answer, its state reason and the test event.
    responses.append(
        stub.VerifyIntegrationKey(
            pb.VerifyIntegrationKeyRequest(
                workspace_id=ws, test_event_profile=pb.ProfileIdentifiers(email="k@example.com")
            ),
            metadata=fwd.admin(),
        )
    )
    responses.append(
        stub.VerifyIntegrationKey(
            pb.VerifyIntegrationKeyRequest(workspace_id=ws2), metadata=fwd.admin()
        )
    )
    # An invalid workspace with a valid-looking key, and a malformed key: errors must not echo
    # it; nor must the refusals of a key Klaviyo does not know or one without events:write.
    klaviyo_mock_thread.add_key(scopeless, "acct-scopeless", scopes={"profiles:write"})
    errors = []
    for request in (
        pb.RegisterIntegrationRequest(workspace_id="bad ws", private_key=key),
        pb.RegisterIntegrationRequest(workspace_id=ws, private_key=key[:-1] + "!"),
        pb.RegisterIntegrationRequest(workspace_id=new_workspace_id(), private_key=unknown),
        pb.RegisterIntegrationRequest(workspace_id=new_workspace_id(), private_key=scopeless),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.RegisterIntegration(request, metadata=fwd.admin())
        errors.append(caught.value)
    fwd.stop()  # flush logs and the WAL

    assert [details(e)[0] for e in errors[2:]] == ["KEY_REJECTED", "KEY_SCOPE_MISSING"]
    for secret in (key, rejected, key[:-1], unknown, scopeless):
        assert secret.encode() not in all_bytes_under(fwd.data_dir), (
            "raw key found in the data folder"
        )
        assert secret not in fwd.logs()
        for response in responses:
            assert secret.encode() not in response.SerializeToString()
        for error in errors:
            assert secret not in (error.details() or "")
            assert secret.encode() not in b"".join(
                v if isinstance(v, bytes) else v.encode() for _, v in error.trailing_metadata()
            )
    assert f"pk_…{key[-4:]}" in str(responses[0])


def test_restart_keeps_integrations_and_keys_decrypt(
    forwarder_factory,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-restart")
    register(fwd, ws, key)
    fwd.restart()
    assert integration(fwd, ws).key_fingerprint == f"pk_…{key[-4:]}"
    forward(fwd, [make_click(ws, "r-1", email="r@example.com")])
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-restart")) == 1,
        what="delivery after restart",
    )


def test_remove_shreds_the_transit_key_and_drops_events(
    forwarder_factory,
    openbao: VaultFixture,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory()  # Klaviyo unreachable: events stay queued
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    forward(fwd, [make_click(ws, f"d-{i}", email="d@example.com") for i in range(4)])
    ciphertext = stored_ciphertext(fwd, ws)
    root = openbao.root_client()
    # Before removal Vault itself can decrypt it...
    root.secrets.transit.decrypt_data(name=f"elido-ws-{ws}", ciphertext=ciphertext)
    removed = fwd.stub().RemoveIntegration(
        pb.RemoveIntegrationRequest(workspace_id=ws), metadata=fwd.admin()
    )
    assert removed.dropped_event_count == 4
    # ...after it, not even the root token can: the key is gone (crypto-shredding).
    with pytest.raises(hvac.exceptions.VaultError, match=r"(?i)not found|encryption key"):
        root.secrets.transit.decrypt_data(name=f"elido-ws-{ws}", ciphertext=ciphertext)
    assert fwd.database.value("SELECT count(*) FROM outbox WHERE workspace_id=?", ws) == 0
    with pytest.raises(grpc.RpcError) as again:
        fwd.stub().RemoveIntegration(
            pb.RemoveIntegrationRequest(workspace_id=ws), metadata=fwd.admin()
        )
    assert again.value.code() == grpc.StatusCode.NOT_FOUND


def test_rotation_then_rewrap_moves_ciphertext_to_the_new_version_and_delivery_works(
    forwarder_factory,
    openbao: VaultFixture,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-rotate")
    register(fwd, ws, key)
    assert stored_ciphertext(fwd, ws).startswith("vault:v1:")
    openbao.root_client().secrets.transit.rotate_key(name=f"elido-ws-{ws}")
    result = fwd.stub().RewrapKeys(pb.RewrapKeysRequest(workspace_id=ws), metadata=fwd.admin())
    assert (result.rewrapped_count, result.unchanged_count) == (1, 0)
    assert stored_ciphertext(fwd, ws).startswith("vault:v2:")
    assert integration(fwd, ws).key_version == 2
    again = fwd.stub().RewrapKeys(pb.RewrapKeysRequest(workspace_id=ws), metadata=fwd.admin())
    assert (again.rewrapped_count, again.unchanged_count) == (0, 1)
    fwd.restart()  # no cached plaintext: the rewrapped ciphertext itself must decrypt
    forward(fwd, [make_click(ws, "rot-1", email="rot@example.com")])
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-rotate")) == 1, what="delivery after rewrap"
    )


def test_vault_down_intake_continues_registration_unavailable_then_delivery_resumes(
    forwarder_factory,
    openbao_file_server: VaultFixture,
    klaviyo_mock_thread: KlaviyoMockThread,  # type: ignore[no-untyped-def]
) -> None:
    vault = openbao_file_server
    fwd: ForwarderProcess = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url,
        vault=vault,
        env={"FORWARDER_KEY_CACHE_TTL_S": "0.5"},
    )
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-vault")
    register(fwd, ws, key)
    vault.server.kill()
    import time

    time.sleep(1.0)  # let the cached plaintext expire
    dispositions = forward(
        fwd, [make_click(ws, f"v-{i}", email="v@example.com") for i in range(10)]
    )
    assert dispositions == [pb.CLICK_DISPOSITION_QUEUED] * 10
    with pytest.raises(grpc.RpcError) as caught:
        register(fwd, new_workspace_id(), key)  # Klaviyo knows it: Vault is what fails
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, "UNAVAILABLE must carry RetryInfo"
    time.sleep(1.0)
    assert len(klaviyo_mock_thread.timeline("acct-vault")) == 0  # paused, not failed
    assert integration(fwd, ws).delivery.failed_count == 0
    vault.server.start()
    wait_for(
        lambda: len(klaviyo_mock_thread.timeline("acct-vault")) == 10,
        timeout_s=30,
        what="delivery resumed after Vault came back",
    )
