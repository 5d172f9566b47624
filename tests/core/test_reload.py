"""Rotation without restart: SIGHUP reloads the token file and the TLS certificate and key
while a StreamClicks stream stays open (the real forwarder process, real TLS)."""

from __future__ import annotations

import io
import queue
import shutil
import signal
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc

from client.cli.__main__ import run
from tests.support.calls import make_click, wait_for
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id
from tests.support.pki import make_pki


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pki(directory: Path) -> Path:
    directory.mkdir()
    return make_pki(directory)


def _tokens(*argv: str) -> str:
    """Runs ``elido-fwd tokens ...`` in-process; returns what it printed on stdout."""
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run(["tokens", *argv], stdin=io.StringIO(), stdout=stdout, stderr=stderr, env={})
    assert code == 0, stderr.getvalue()
    return stdout.getvalue().strip()


class OpenStream:
    """A StreamClicks call kept open; :meth:`send` sends one batch and waits for its ack."""

    def __init__(self, channel: grpc.Channel, token: str) -> None:
        self._requests: queue.Queue[pb.StreamClicksRequest | None] = queue.Queue()
        self._batch = 0
        self._responses: Iterator[pb.StreamClicksResponse] = pb_grpc.ForwarderServiceStub(
            channel
        ).StreamClicks(iter(self._requests.get, None), metadata=_auth(token))

    def send(self, ws: str) -> pb.StreamClicksResponse:
        self._batch += 1
        click = make_click(ws, f"click-{self._batch}-{new_workspace_id()}", "jane@example.com")
        self._requests.put(pb.StreamClicksRequest(batch_id=self._batch, clicks=[click]))
        response = next(self._responses)
        assert response.batch_id == self._batch
        return response

    def close(self) -> None:
        self._requests.put(None)


def _auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _channel(ca: Path, port: int) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    return grpc.secure_channel(f"localhost:{port}", credentials)


def _forward_code(channel: grpc.Channel, token: str, ws: str) -> grpc.StatusCode:
    try:
        pb_grpc.ForwarderServiceStub(channel).ForwardClick(
            pb.ForwardClickRequest(click=make_click(ws, f"c-{new_workspace_id()}")),
            metadata=_auth(token),
            timeout=10,
        )
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _reloads(metrics_port: int) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("forwarder_config_reload_total{"):
            labels, value = line.split("} ")
            pairs = dict(p.split("=") for p in labels.split("{")[1].split(","))
            counts[(pairs["material"].strip('"'), pairs["result"].strip('"'))] = float(value)
    return counts


@pytest.fixture
def rotating(
    tmp_path: Path, forwarder_factory: Any
) -> Iterator[tuple[ForwarderProcess, Path, int]]:
    tls = tmp_path / "tls"
    tls.mkdir()
    old = _pki(tmp_path / "old-pki")
    shutil.copy(old / "server.pem", tls / "server.pem")
    shutil.copy(old / "server.key", tls / "server.key")
    metrics_port = _free_port()
    fwd = forwarder_factory(
        env={
            "FORWARDER_TLS_CERT": str(tls / "server.pem"),
            "FORWARDER_TLS_KEY": str(tls / "server.key"),
            "FORWARDER_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
            "FORWARDER_INTAKE_WORKERS": "1",
        }
    )
    return fwd, old, metrics_port


def test_sighup_rotates_tokens_and_certificate_while_a_stream_stays_open(
    rotating: tuple[ForwarderProcess, Path, int], tmp_path: Path
) -> None:
    fwd, old_pki, metrics_port = rotating
    tokens_file = Path(fwd.env["FORWARDER_TOKENS_FILE"])
    tls = Path(fwd.env["FORWARDER_TLS_CERT"]).parent
    ws = new_workspace_id()
    old_channel = _channel(old_pki / "ca.pem", fwd.port)
    stream = OpenStream(old_channel, fwd.ingest_token)
    try:
        assert stream.send(ws).results[0].disposition == pb.CLICK_DISPOSITION_NO_INTEGRATION

        # Rotate: a new ingest token, the old one revoked, a certificate from a new CA.
        new_token = _tokens("create", "--file", str(tokens_file), "--name", "edge-2",
                            "--role", "ingest")  # fmt: skip
        _tokens("revoke", "--file", str(tokens_file), "--name", "test-ingest")
        new_pki = _pki(tmp_path / "new-pki")
        shutil.copy(new_pki / "server.pem", tls / "server.pem")
        shutil.copy(new_pki / "server.key", tls / "server.key")
        assert fwd.process is not None
        fwd.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "tls certificate reloaded" in fwd.logs(), what="the reload")
        assert _reloads(metrics_port) == {("tokens", "success"): 1, ("tls", "success"): 1}

        # The open stream (its connection and its admitted call) is unaffected.
        assert stream.send(ws).results[0].disposition == pb.CLICK_DISPOSITION_NO_INTEGRATION

        # New connections get the new certificate: the old CA no longer verifies it.
        with _channel(old_pki / "ca.pem", fwd.port) as stale:
            assert _forward_code(stale, new_token, ws) == grpc.StatusCode.UNAVAILABLE
        with _channel(new_pki / "ca.pem", fwd.port) as fresh:
            assert _forward_code(fresh, new_token, ws) == grpc.StatusCode.OK
            assert _forward_code(fresh, fwd.ingest_token, ws) == grpc.StatusCode.UNAUTHENTICATED

        # A bad rotation keeps what works and says why, in the log and the metric.
        tokens_file.write_text("{not json")
        shutil.copy(old_pki / "server.key", tls / "server.key")  # not the new certificate's key
        fwd.process.send_signal(signal.SIGHUP)
        wait_for(lambda: fwd.logs().count("reload failed") >= 2, what="the failed reload")
        failures = [line for line in fwd.logs().splitlines() if "reload failed" in line]
        assert any("FORWARDER_TOKENS_FILE" in line and "not JSON" in line for line in failures)
        assert any("FORWARDER_TLS_KEY" in line for line in failures)
        counts = _reloads(metrics_port)
        assert counts[("tokens", "failure")] == 1
        assert counts[("tls", "failure")] == 1
        with _channel(new_pki / "ca.pem", fwd.port) as fresh:
            assert _forward_code(fresh, new_token, ws) == grpc.StatusCode.OK
        assert stream.send(ws).results[0].disposition == pb.CLICK_DISPOSITION_NO_INTEGRATION
        assert new_token not in fwd.logs()
    finally:
        stream.close()
        old_channel.close()
    assert fwd.process.poll() is None  # SIGHUP never stopped it
