"""Erasure, replay selection and the audit trail driven with grpcurl (reflection, JSON)."""

from __future__ import annotations

import json
from typing import Any

from tests.core.test_grpcurl import SERVICE, grpcurl
from tests.support.calls import forward, make_click, new_key, register
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id


def test_erase_replay_and_audit_with_grpcurl(forwarder_factory: Any) -> None:
    fwd: ForwarderProcess = forwarder_factory()
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    forward(fwd, [make_click(ws, "g-1", email="grpcurl.person@example.com")])
    described = grpcurl(fwd, "describe", SERVICE)
    for rpc in ("ErasePersonalData", "ListAuditEvents"):
        assert f"rpc {rpc}" in described.stdout
    # Identifiers through stdin (-d @), never argv.
    erased = grpcurl(
        fwd,
        f"{SERVICE}/ErasePersonalData",
        token=fwd.admin_token,
        stdin_data=json.dumps({"workspace_id": ws, "emails": ["GRPCURL.person@example.com"]}),
    )
    assert erased.returncode == 0, erased.stderr
    assert json.loads(erased.stdout) == {"erased_click_count": "1", "erased_queued_count": "1"}
    dry = grpcurl(
        fwd,
        f"{SERVICE}/ReplayFailedEvents",
        token=fwd.admin_token,
        data={"workspace_id": ws, "failed_after": "2026-01-01T00:00:00Z", "dry_run": True},
    )
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout) == {"dry_run": True}  # zero is not printed
    listed = grpcurl(
        fwd, f"{SERVICE}/ListAuditEvents", token=fwd.admin_token, data={"workspace_id": ws}
    )
    assert listed.returncode == 0, listed.stderr
    actions = [e["action"] for e in json.loads(listed.stdout)["audit_events"]]
    assert actions == ["AUDIT_ACTION_REPLAY", "AUDIT_ACTION_ERASE", "AUDIT_ACTION_REGISTER"]
    assert "grpcurl.person" not in (erased.stdout + listed.stdout + fwd.logs()).lower()
