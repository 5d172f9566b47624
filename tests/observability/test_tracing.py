"""One trace from the sidecar's HTTP input to the Klaviyo mock, seen by an in-memory exporter.

The forwarder and the sidecar run in this process (so one in-memory exporter sees both), but
they talk only as in production: HTTP into the sidecar, its disk spool, StreamClicks over
loopback gRPC, the forwarder's SQLite store and real OpenBao, httpx to the Klaviyo mock. The
trace context crosses the gRPC hop in the batch's ``trace_context`` field, not in memory.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ingest_sidecar import _tracing as sidecar_tracing
from ingest_sidecar._config import load_config as load_sidecar_config
from ingest_sidecar._sidecar import Sidecar
from server import _tracing as server_tracing
from server._app import Forwarder
from server._config import load_config
from tests.klaviyo_mock import Fault, FaultKind, KlaviyoMock
from tests.sidecar.helpers import click_record, http_request, wait_for
from tests.support.klaviyo import TEST_ACCOUNT, TEST_KEY
from tests.support.openbao import VaultFixture, new_workspace_id

# A trace the edge proxy started: the sidecar's span must continue it.
EDGE_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
EDGE_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    server_tracing.install(provider)
    sidecar_tracing.install(provider)
    yield memory
    server_tracing.shutdown()
    sidecar_tracing.shutdown()
    provider.shutdown()


class Stack:
    def __init__(self, forwarder: Forwarder, sidecar: Sidecar, admin: str, ingest: str) -> None:
        self.forwarder = forwarder
        self.sidecar = sidecar
        self.admin = admin
        self.ingest = ingest


@pytest_asyncio.fixture(loop_scope="session")
async def stack(
    tmp_path: Path,
    openbao: VaultFixture,
    klaviyo_mock: KlaviyoMock,
    exporter: InMemorySpanExporter,
) -> AsyncIterator[Stack]:
    admin, ingest = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = [
        {"name": n, "role": n, "sha256": hashlib.sha256(t.encode()).hexdigest()}
        for n, t in (("admin", admin), ("ingest", ingest))
    ]
    (tmp_path / "tokens.json").write_text(json.dumps({"tokens": tokens}))
    config = load_config(
        {
            "FORWARDER_LISTEN": "127.0.0.1:0",
            "FORWARDER_DB_PATH": str(tmp_path / "forwarder.db"),
            "FORWARDER_TOKENS_FILE": str(tmp_path / "tokens.json"),
            "FORWARDER_INTAKE_WORKERS": "1",
            "FORWARDER_GRACE_S": "2",
            "FORWARDER_POLL_INTERVAL_S": "0.1",
            "FORWARDER_RETRY_BASE_S": "0.1",
            "VAULT_ADDR": openbao.addr,
            "VAULT_TOKEN": openbao.forwarder_token,
            "KLAVIYO_BASE_URL": klaviyo_mock.base_url,
        }
    )
    forwarder = Forwarder(config)
    port = await forwarder.start()
    sidecar = Sidecar(
        load_sidecar_config(
            None,
            env={
                "ELIDO_SIDECAR_HTTP_PORT": "0",
                "ELIDO_SIDECAR_SPOOL_DIRECTORY": str(tmp_path / "spool"),
                "ELIDO_SIDECAR_STREAM_TARGET": f"127.0.0.1:{port}",
                "ELIDO_SIDECAR_STREAM_TOKEN": ingest,
                # Long enough for two requests to share a batch (test_a_batch_of_two_requests...).
                "ELIDO_SIDECAR_STREAM_BATCH_LINGER_MS": "400",
            },
        )
    )
    await sidecar.start()
    try:
        yield Stack(forwarder, sidecar, admin, ingest)
    finally:
        await sidecar.stop()
        await forwarder.stop()


async def _register(stack: Stack, workspace: str) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.forwarder.port}") as channel:
        await pb_grpc.ForwarderServiceStub(channel).RegisterIntegration(
            pb.RegisterIntegrationRequest(workspace_id=workspace, private_key=TEST_KEY),
            metadata=(("authorization", f"Bearer {stack.admin}"),),
            timeout=10,
        )


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_from_the_sidecar_http_input_to_the_klaviyo_mock(
    stack: Stack, klaviyo_mock: KlaviyoMock, exporter: InMemorySpanExporter
) -> None:
    workspace = new_workspace_id("trace")
    await _register(stack, workspace)
    click = click_record(1, workspace_id=workspace, click_id="trace-click-1")
    status, _, _ = await http_request(
        stack.sidecar.http_port,
        "POST",
        "/v1/clicks",
        json.dumps(click).encode(),
        {"traceparent": f"00-{EDGE_TRACE_ID}-{EDGE_SPAN_ID}-01"},
    )
    assert status == 202
    await wait_for(
        lambda: "trace-click-1" in [e.unique_id for e in klaviyo_mock.timeline(TEST_ACCOUNT)], 20
    )
    await wait_for(lambda: bool(_named(list(exporter.get_finished_spans()), "POST /api/events")))
    spans = list(exporter.get_finished_spans())

    (http,) = _named(spans, "POST /v1/clicks")
    sent = [s for s in _named(spans, "StreamClicks batch") if s.kind is SpanKind.PRODUCER]
    received = [s for s in _named(spans, "StreamClicks batch") if s.kind is SpanKind.CONSUMER]
    (klaviyo,) = _named(spans, "POST /api/events")
    assert len(sent) == 1
    assert len(received) == 1
    # One trace, the edge's, from the HTTP input to the Klaviyo request...
    for span in (http, sent[0], received[0], klaviyo):
        assert _hex(span.context.trace_id, 32) == EDGE_TRACE_ID, span.name
    # ... each hop the child of the one before: the proxy's span, the sidecar's request, its
    # batch, the forwarder's batch (parented across gRPC by the batch's trace_context field).
    assert _hex(_parent_id(http) or 0, 16) == EDGE_SPAN_ID
    assert http.kind is SpanKind.SERVER
    assert _parent_id(sent[0]) == http.context.span_id
    assert _parent_id(received[0]) == sent[0].context.span_id
    assert received[0].parent is not None
    assert received[0].parent.is_remote
    assert _parent_id(klaviyo) == received[0].context.span_id
    assert klaviyo.kind is SpanKind.CLIENT
    assert klaviyo.attributes is not None
    assert klaviyo.attributes["http.response.status_code"] == 202
    assert klaviyo.attributes["elido.klaviyo.outcome"] == "accepted"
    assert klaviyo.status.status_code is not StatusCode.ERROR
    # The StreamClicks RPC has its own span (the grpc.aio instrumentation) once the stream ends;
    # unary RPCs have one at once.
    assert any(s.name.endswith("/RegisterIntegration") for s in spans)
    _assert_nothing_personal(spans)


async def test_a_refused_klaviyo_request_is_an_error_span_with_its_status(
    stack: Stack, klaviyo_mock: KlaviyoMock, exporter: InMemorySpanExporter
) -> None:
    workspace = new_workspace_id("trace")
    await _register(stack, workspace)
    klaviyo_mock.inject(Fault(kind=FaultKind.STATUS, status=400, count=1, endpoint="events"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.forwarder.port}") as channel:
        request = pb.ForwardClickRequest(
            click=pb.Click(
                click_id="refused-click-1",
                workspace_id=workspace,
                identifiers=pb.ProfileIdentifiers(email="jane@example.com"),
            )
        )
        request.click.click_time.GetCurrentTime()
        await pb_grpc.ForwarderServiceStub(channel).ForwardClick(
            request,
            metadata=(
                ("authorization", f"Bearer {stack.ingest}"),
                ("traceparent", f"00-{EDGE_TRACE_ID[::-1]}-{EDGE_SPAN_ID}-01"),
            ),
            timeout=10,
        )

    def refused() -> list[ReadableSpan]:
        return [
            s
            for s in _named(list(exporter.get_finished_spans()), "POST /api/events")
            if s.attributes and s.attributes.get("http.response.status_code") == 400
        ]

    await wait_for(lambda: bool(refused()), 20)
    (span,) = refused()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["elido.klaviyo.outcome"] == "invalid"
    # The unary RPC's span (continuing the caller's metadata) is the Klaviyo span's parent.
    (rpc,) = [s for s in exporter.get_finished_spans() if s.name.endswith("/ForwardClick")]
    assert _hex(rpc.context.trace_id, 32) == EDGE_TRACE_ID[::-1]
    assert _parent_id(span) == rpc.context.span_id
    _assert_nothing_personal(list(exporter.get_finished_spans()))


async def test_a_batch_of_two_traced_requests_links_to_both(
    stack: Stack, klaviyo_mock: KlaviyoMock, exporter: InMemorySpanExporter
) -> None:
    workspace = new_workspace_id("trace")
    await _register(stack, workspace)
    traces = [secrets.token_hex(16) for _ in range(2)]
    for i, trace_id in enumerate(traces):
        click = click_record(i, workspace_id=workspace, click_id=f"linked-{i}")
        status, _, _ = await http_request(
            stack.sidecar.http_port,
            "POST",
            "/v1/clicks",
            json.dumps(click).encode(),
            {"traceparent": f"00-{trace_id}-{EDGE_SPAN_ID}-01"},
        )
        assert status == 202

    def delivered() -> list[ReadableSpan]:
        return _named(list(exporter.get_finished_spans()), "POST /api/events")

    await wait_for(lambda: len(delivered()) >= 2, 20)
    spans = list(exporter.get_finished_spans())
    requests = {_hex(s.context.trace_id, 32): s for s in _named(spans, "POST /v1/clicks")}
    assert set(traces) <= set(requests)
    (batch,) = [
        s
        for s in _named(spans, "StreamClicks batch")
        if s.kind is SpanKind.PRODUCER and len(s.links) == 2
    ]
    # A batch of two traces belongs to neither: a trace of its own, linked to both requests.
    assert batch.parent is None
    assert {_hex(link.context.trace_id, 32) for link in batch.links} == set(traces)
    assert {link.context.span_id for link in batch.links} == {
        requests[t].context.span_id for t in traces
    }
    (received,) = [
        s
        for s in _named(spans, "StreamClicks batch")
        if s.kind is SpanKind.CONSUMER and _parent_id(s) == batch.context.span_id
    ]
    # Each click's Klaviyo request continues the batch's trace.
    batch_trace = [s for s in delivered() if s.context.trace_id == batch.context.trace_id]
    assert len(batch_trace) == 2
    assert all(_parent_id(s) == received.context.span_id for s in batch_trace)


def _assert_nothing_personal(spans: list[ReadableSpan]) -> None:
    for span in spans:
        text = json.dumps(
            {
                "name": span.name,
                "attributes": dict(span.attributes or {}),
                "events": [dict(e.attributes or {}) for e in span.events],
                "status": span.status.description,
            },
            default=str,
        )
        assert "@" not in text, text
        assert "%40" not in text, text
        assert TEST_KEY not in text
        assert "click-1" not in text, "click ids stay out of spans"


def test_carrier_of_an_untraced_batch_is_empty() -> None:
    # With tracing off, the hooks add nothing to the wire.
    assert not server_tracing.enabled()
    assert sidecar_tracing.batch_sent(1, 0, 10) == b""
