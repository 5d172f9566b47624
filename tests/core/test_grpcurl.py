"""A platform engineer drives every RPC with grpcurl (reflection, JSON)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.calls import new_key
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
SERVICE = "elido.forwarder.v1.ForwarderService"


def grpcurl(
    fwd: ForwarderProcess,
    *args: str,
    token: str | None = None,
    data: object = None,
    stdin_data: str | None = None,
) -> subprocess.CompletedProcess[str]:
    cmd = [GRPCURL, "-plaintext"]
    if token:
        cmd += ["-H", f"authorization: Bearer {token}"]
    if data is not None or stdin_data is not None:
        cmd += ["-d", "@" if stdin_data is not None else json.dumps(data)]
    cmd += [fwd.target, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, input=stdin_data)


def test_list_and_describe_show_service_and_health(forwarder: ForwarderProcess) -> None:
    listed = grpcurl(forwarder, "list")
    assert listed.returncode == 0, listed.stderr
    assert SERVICE in listed.stdout.split()
    assert "grpc.health.v1.Health" in listed.stdout.split()
    described = grpcurl(forwarder, "describe", SERVICE)
    assert described.returncode == 0, described.stderr
    for rpc in (
        "RegisterIntegration",
        "RemoveIntegration",
        "GetIntegration",
        "ListIntegrations",
        "ForwardClick",
        "StreamClicks",
        "ForwardConversion",
        "ListFailedEvents",
        "ReplayFailedEvents",
        "RewrapKeys",
        "VerifyIntegrationKey",
    ):
        assert f"rpc {rpc}" in described.stdout
    health = grpcurl(forwarder, "grpc.health.v1.Health/Check")
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_register_get_list_remove_with_json(forwarder: ForwarderProcess) -> None:
    ws = new_workspace_id()
    key = new_key()
    # The key goes through stdin (-d @), as the docs advise, never argv.
    reg = grpcurl(
        forwarder,
        f"{SERVICE}/RegisterIntegration",
        token=forwarder.admin_token,
        stdin_data=json.dumps(
            {
                "workspace_id": ws,
                "private_key": key,
                "settings": {"click_metric_name": "Clicked Elido Link"},
            }
        ),
    )
    assert reg.returncode == 0, reg.stderr
    integration = json.loads(reg.stdout)["integration"]
    assert integration["key_fingerprint"] == f"pk_…{key[-4:]}"
    # No Klaviyo is reachable here: the key cannot be checked, so it is stored unverified.
    assert integration["state"] == "INTEGRATION_STATE_UNVERIFIED"
    assert "could not confirm" in integration["state_reason"]
    assert integration["settings"]["click_metric_name"] == "Clicked Elido Link"
    assert key not in reg.stdout

    got = grpcurl(
        forwarder,
        f"{SERVICE}/GetIntegration",
        token=forwarder.admin_token,
        data={"workspace_id": ws},
    )
    assert json.loads(got.stdout)["integration"]["workspace_id"] == ws

    listed = grpcurl(forwarder, f"{SERVICE}/ListIntegrations", token=forwarder.admin_token, data={})
    assert ws in [i["workspace_id"] for i in json.loads(listed.stdout)["integrations"]]

    removed = grpcurl(
        forwarder,
        f"{SERVICE}/RemoveIntegration",
        token=forwarder.admin_token,
        data={"workspace_id": ws},
    )
    assert removed.returncode == 0, removed.stderr
    again = grpcurl(
        forwarder,
        f"{SERVICE}/GetIntegration",
        token=forwarder.admin_token,
        data={"workspace_id": ws},
    )
    assert again.returncode != 0
    assert "NotFound" in again.stderr
    assert "INTEGRATION_NOT_FOUND" in again.stderr


def test_click_through_grpcurl_answers_disposition(forwarder: ForwarderProcess) -> None:
    ws = new_workspace_id()
    grpcurl(
        forwarder,
        f"{SERVICE}/RegisterIntegration",
        token=forwarder.admin_token,
        stdin_data=json.dumps({"workspace_id": ws, "private_key": new_key()}),
    )
    click = {
        "click": {
            "workspace_id": ws,
            "click_id": "c-1",
            "click_time": "2026-01-02T03:04:05Z",
            "destination_url": "https://shop.example/p?email=jane%40example.com",
        }
    }
    first = grpcurl(forwarder, f"{SERVICE}/ForwardClick", token=forwarder.ingest_token, data=click)
    assert json.loads(first.stdout) == {"disposition": "CLICK_DISPOSITION_QUEUED"}
    second = grpcurl(forwarder, f"{SERVICE}/ForwardClick", token=forwarder.ingest_token, data=click)
    assert json.loads(second.stdout) == {"disposition": "CLICK_DISPOSITION_DUPLICATE"}
    wrong_role = grpcurl(
        forwarder, f"{SERVICE}/ForwardClick", token=forwarder.admin_token, data=click
    )
    assert "PermissionDenied" in wrong_role.stderr
