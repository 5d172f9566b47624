"""The standard OTEL_* variables switch the real processes' OTLP export on; it is off without.

A tiny OTLP/gRPC collector (the OpenTelemetry collector's TraceService, from
opentelemetry-proto) receives what a forwarder subprocess exports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.deploy.conftest import REPO
from tests.sidecar.helpers import click_record
from tests.support.klaviyo import TEST_ACCOUNT, TEST_KEY
from tests.support.openbao import new_workspace_id

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, str], Any]] = []
        self._lock = threading.Lock()

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def received(self) -> list[tuple[dict[str, str], Any]]:
        with self._lock:
            return list(self.spans)


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


def _otel(port: int, **extra: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **extra,
    }


def _click(forwarder: Any) -> None:
    click = pb.Click(click_id="otlp-click-1", workspace_id=new_workspace_id("otlp"))
    click.identifiers.email = "jane@example.com"
    click.click_time.GetCurrentTime()
    forwarder.stub().ForwardClick(
        pb.ForwardClickRequest(click=click),
        metadata=[*forwarder.ingest(), ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01")],
        timeout=10,
    )


def test_otlp_export_when_the_exporter_is_named(
    forwarder_factory: Any, collector: tuple[Collector, int]
) -> None:
    servicer, port = collector
    forwarder = forwarder_factory(env=_otel(port, OTEL_TRACES_EXPORTER="otlp"))
    _click(forwarder)
    deadline = time.monotonic() + 20
    while not any(s.name.endswith("/ForwardClick") for _, s in servicer.received()):
        assert time.monotonic() < deadline, "no ForwardClick span reached the collector"
        time.sleep(0.1)
    ((resource, span),) = [
        (r, s) for r, s in servicer.received() if s.name.endswith("/ForwardClick")
    ]
    assert resource["service.name"] == "elido-forwarder"
    # The caller's W3C context was continued.
    assert span.trace_id.hex() == TRACE_ID
    assert span.parent_span_id.hex() == PARENT_ID
    # Health checks are not traced (probes would drown everything else).
    health_pb2_grpc.HealthStub(forwarder.channel()).Check(health_pb2.HealthCheckRequest())
    assert forwarder.stop() == 0  # the drain flushes the exporter
    assert not [s for _, s in servicer.received() if "Health" in s.name]


def test_no_export_unless_an_exporter_is_named(
    forwarder_factory: Any, collector: tuple[Collector, int]
) -> None:
    servicer, port = collector
    # The endpoint alone (as a platform might set it for every pod) does not switch tracing on.
    forwarder = forwarder_factory(env=_otel(port))
    _click(forwarder)
    assert forwarder.stop() == 0
    assert servicer.received() == []


def test_a_malformed_exporter_setting_stops_the_forwarder_with_one_line(
    forwarder_factory: Any,
) -> None:
    with pytest.raises(RuntimeError, match="exited with 2") as failure:
        forwarder_factory(env={"OTEL_TRACES_EXPORTER": "zipkin"})
    message = str(failure.value)
    assert "OTEL_TRACES_EXPORTER must be otlp, console or none, got 'zipkin'" in message
    assert "Traceback" not in message


def test_a_malformed_exporter_setting_stops_the_sidecar_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ingest_sidecar"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{REPO}:{REPO / 'protos'}",
            "ELIDO_SIDECAR_SPOOL_DIRECTORY": str(tmp_path / "spool"),
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "elido-sidecar: OTEL_EXPORTER_OTLP_PROTOCOL must be grpc or http/protobuf, got 'http/json'"
    ]


@pytest.mark.parametrize("entry", ["ingest_sidecar.__main__", "server.__main__"])
def test_opentelemetry_is_not_imported_while_tracing_is_off(entry: str) -> None:
    # The sidecar's memory budget: tracing that is off costs no imports.
    code = (
        f"import sys, {entry}; "
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry')); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'protos'}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_one_trace_across_the_real_sidecar_and_forwarder_processes(
    forwarder_factory: Any,
    klaviyo_mock_thread: Any,
    collector: tuple[Collector, int],
    tmp_path: Path,
) -> None:
    servicer, port = collector
    forwarder = forwarder_factory(
        klaviyo_url=klaviyo_mock_thread.base_url, env=_otel(port, OTEL_TRACES_EXPORTER="otlp")
    )
    workspace = new_workspace_id("otlp")
    forwarder.stub().RegisterIntegration(
        pb.RegisterIntegrationRequest(workspace_id=workspace, private_key=TEST_KEY),
        metadata=forwarder.admin(),
        timeout=10,
    )
    http_port = _free_port()
    log = (tmp_path / "sidecar.log").open("wb")
    sidecar = subprocess.Popen(
        [sys.executable, "-m", "ingest_sidecar"],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": f"{REPO}:{REPO / 'protos'}",
            "ELIDO_SIDECAR_HTTP_PORT": str(http_port),
            "ELIDO_SIDECAR_SPOOL_DIRECTORY": str(tmp_path / "spool"),
            "ELIDO_SIDECAR_STREAM_TARGET": forwarder.target,
            "ELIDO_SIDECAR_STREAM_TOKEN": forwarder.ingest_token,
            **_otel(port, OTEL_TRACES_EXPORTER="otlp"),
        },
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    log.close()
    try:
        click = click_record(1, workspace_id=workspace, click_id="otlp-process-click")
        deadline = time.monotonic() + 20
        while True:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{http_port}/v1/clicks",
                    data=json.dumps(click).encode(),
                    headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
                    method="POST",
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.status == 202
                break
            except OSError:
                assert sidecar.poll() is None, (tmp_path / "sidecar.log").read_text()
                assert time.monotonic() < deadline, "the sidecar did not start listening"
                time.sleep(0.1)

        def names() -> dict[str, list[tuple[dict[str, str], Any]]]:
            found: dict[str, list[tuple[dict[str, str], Any]]] = {}
            for resource, span in servicer.received():
                if span.trace_id.hex() == TRACE_ID:
                    found.setdefault(span.name, []).append((resource, span))
            return found

        deadline = time.monotonic() + 30
        while "POST /api/events" not in names():
            assert time.monotonic() < deadline, f"spans of the trace: {sorted(names())}"
            time.sleep(0.2)
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(20)
    spans = names()
    ((http_resource, http),) = spans["POST /v1/clicks"]
    batches = {r["service.name"]: s for r, s in spans["StreamClicks batch"]}
    ((klaviyo_resource, klaviyo),) = spans["POST /api/events"]
    assert http_resource["service.name"] == "elido-sidecar"
    assert klaviyo_resource["service.name"] == "elido-forwarder"
    assert http.parent_span_id.hex() == PARENT_ID
    assert batches["elido-sidecar"].parent_span_id == http.span_id
    assert batches["elido-forwarder"].parent_span_id == batches["elido-sidecar"].span_id
    assert klaviyo.parent_span_id == batches["elido-forwarder"].span_id
    assert "otlp-process-click" in [e.unique_id for e in klaviyo_mock_thread.timeline(TEST_ACCOUNT)]
