"""Issue 14 item 7: a registration that fails in the store leaves no transit key behind."""

from __future__ import annotations

import sqlite3

import grpc
import hvac.exceptions
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.core.test_intake import details
from tests.support.calls import integration, new_key, register
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import VaultFixture, new_workspace_id


def transit_key_exists(openbao: VaultFixture, ws: str) -> bool:
    try:
        openbao.root_client().secrets.transit.read_key(f"elido-ws-{ws}", mount_point="transit")
    except hvac.exceptions.InvalidPath:
        return False
    return True


def test_a_first_registration_failing_in_the_store_leaves_no_transit_key(
    forwarder_factory,  # type: ignore[no-untyped-def]
    openbao: VaultFixture,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_DB_BUSY_TIMEOUT_MS": "300"})
    ws, kept = new_workspace_id(), new_workspace_id()
    register(fwd, kept, new_key())
    assert transit_key_exists(openbao, kept)
    # Another writer holds the database: the store cannot commit within its busy timeout.
    blocker = sqlite3.connect(fwd.db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        for workspace in (ws, kept):
            with pytest.raises(grpc.RpcError) as caught:
                register(fwd, workspace, new_key())
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert details(caught.value)[0] == "STORE_UNAVAILABLE"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The new workspace left nothing behind; the existing one kept its key and integration.
    assert not transit_key_exists(openbao, ws)
    with pytest.raises(grpc.RpcError) as missing:
        integration(fwd, ws)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert transit_key_exists(openbao, kept)
    # No Klaviyo is reachable here: the key could not be checked, hence unverified.
    assert integration(fwd, kept).state == pb.INTEGRATION_STATE_UNVERIFIED
    # And the workspace registers normally once the store is back.
    assert register(fwd, ws, new_key()).workspace_id == ws
    assert transit_key_exists(openbao, ws)
