"""Operating the server: TLS and mTLS, Prometheus metrics, graceful drain, log redaction."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import structlog
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server._logging import configure_logging
from tests.support.calls import forward, make_click, new_key, register
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_mutual_tls_admits_only_clients_with_a_certificate(forwarder_factory, pki: Path) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory(
        env={
            "FORWARDER_TLS_CERT": str(pki / "server.pem"),
            "FORWARDER_TLS_KEY": str(pki / "server.key"),
            "FORWARDER_TLS_CLIENT_CA": str(pki / "ca.pem"),
        }
    )
    target = f"localhost:{fwd.port}"
    ca = (pki / "ca.pem").read_bytes()
    with_cert = grpc.ssl_channel_credentials(
        ca, (pki / "client.key").read_bytes(), (pki / "client.pem").read_bytes()
    )
    with grpc.secure_channel(target, with_cert) as channel:
        listed = pb_grpc.ForwarderServiceStub(channel).ListIntegrations(
            pb.ListIntegrationsRequest(), metadata=fwd.admin(), timeout=10
        )
        assert list(listed.integrations) == []
    with (
        grpc.secure_channel(target, grpc.ssl_channel_credentials(ca)) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        pb_grpc.ForwarderServiceStub(channel).ListIntegrations(
            pb.ListIntegrationsRequest(), metadata=fwd.admin(), timeout=10
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.ForwarderServiceStub(channel).ListIntegrations(
            pb.ListIntegrationsRequest(), timeout=5
        )


def test_metrics_count_intake_by_disposition_without_personal_data(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_METRICS_LISTEN": f"127.0.0.1:{port}"})
    ws, key = new_workspace_id(), new_key()
    register(fwd, ws, key)
    forward(
        fwd,
        [
            make_click(ws, "m-1", email="secret.person@example.com"),
            make_click(ws, "m-2", email="secret.person@example.com"),
            make_click(ws, "m-3"),
        ],
    )
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'forwarder_intake_total{disposition="queued",kind="click"} 2.0' in text
    assert 'forwarder_intake_total{disposition="anonymous",kind="click"} 1.0' in text
    assert (
        'forwarder_rpc_duration_seconds_count{code="OK",method="RegisterIntegration"} 1.0' in text
    )
    for private in ("secret.person", key, ws):
        assert private not in text


def test_sigterm_drains_gracefully_and_keeps_every_acked_click(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory()
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    acked = forward(fwd, [make_click(ws, f"t-{i}", email="t@example.com") for i in range(2000)])
    assert len(acked) == 2000
    with grpc.insecure_channel(fwd.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            health.Check(health_pb2.HealthCheckRequest()).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    assert fwd.process is not None
    fwd.process.send_signal(signal.SIGTERM)
    assert fwd.process.wait(15) == 0
    events = [
        json.loads(line).get("event") for line in fwd.logs().splitlines() if line.startswith("{")
    ]
    assert events.index("draining") < events.index("stopped")
    assert fwd.database.value("SELECT count(*) FROM outbox WHERE workspace_id=?", ws) == 2000


def test_json_logs_redact_keys_tokens_and_mask_emails(capsys: pytest.CaptureFixture[str]) -> None:
    key = new_key()
    configure_logging("json", "info")
    try:
        log = structlog.get_logger("test")
        log.info(
            "registering",
            private_key=key,
            note=f"header Klaviyo-API-Key {key}",
            authorization="Bearer abc.def",
            recipient="jane.doe@example.com",
            nested={"token": "t0ps3cret", "list": [key]},
        )
        import logging

        logging.getLogger("hvac").warning("library said %s", key)
    finally:
        structlog.reset_defaults()
    err = capsys.readouterr().err
    assert key not in err
    assert "t0ps3cret" not in err
    assert "abc.def" not in err
    assert "jane.doe@example.com" not in err
    assert "j***@example.com" in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines[0]["event"] == "registering"
    assert lines[0]["private_key"] == "[REDACTED]"
    assert f"pk_…{key[-4:]}" in lines[0]["note"]


def test_request_log_lines_carry_the_callers_request_id(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory()
    fwd.stub().ListIntegrations(
        pb.ListIntegrationsRequest(), metadata=[*fwd.admin(), ("x-request-id", "req-42")]
    )
    deadline = time.monotonic() + 5
    while "req-42" not in fwd.logs() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(json.loads(line) for line in fwd.logs().splitlines() if "req-42" in line)
    assert line["method"] == "ListIntegrations"
    assert line["code"] == "OK"
    assert "duration_ms" in line
