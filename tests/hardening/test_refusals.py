"""Issue 14 item 8: every refused call is logged once and counted with the code sent."""

from __future__ import annotations

import time

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.core.test_intake import error_info
from tests.hardening._support import free_port, log_lines, metric
from tests.support.calls import make_click, new_key, register, wait_for
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id

SERVICE = "/elido.forwarder.v1.ForwarderService/"


@pytest.fixture
def small(forwarder_factory) -> tuple[ForwarderProcess, str]:  # type: ignore[no-untyped-def]
    port = free_port()
    fwd = forwarder_factory(
        env={
            "FORWARDER_MAX_MESSAGE_BYTES": "20000",
            "FORWARDER_METRICS_LISTEN": f"127.0.0.1:{port}",
        }
    )
    return fwd, f"http://127.0.0.1:{port}/metrics"


def finished(fwd: ForwarderProcess, method: str, expected: int = 1) -> list[str]:
    """The codes of ``method``'s "rpc finished" lines, once ``expected`` were written."""

    def codes() -> list[str]:
        return [r["code"] for r in log_lines(fwd, "rpc finished") if r.get("method") == method]

    # The line is written just after the status is sent: give it a moment, then count all.
    wait_for(lambda: len(codes()) >= expected, timeout_s=5, what=f"{method} log lines")
    time.sleep(0.2)
    return codes()


def count(url: str, method: str, code: str) -> float:
    return metric(url, "forwarder_rpc_duration_seconds_count", method=method, code=code)


def serves_an_ordinary_click(fwd: ForwarderProcess, ws: str) -> None:
    register(fwd, ws, new_key())
    ok = fwd.stub().ForwardClick(
        pb.ForwardClickRequest(click=make_click(ws, "ok", email="a@b.co")), metadata=fwd.ingest()
    )
    assert ok.disposition == pb.CLICK_DISPOSITION_QUEUED


def test_an_oversized_unary_call_is_logged_and_counted(small: tuple[ForwarderProcess, str]) -> None:
    fwd, url = small
    ws = new_workspace_id()
    big = make_click(ws, "big", email="a@b.co", user_agent="u" * 30_000)
    with pytest.raises(grpc.RpcError) as caught:
        fwd.stub().ForwardClick(pb.ForwardClickRequest(click=big), metadata=fwd.ingest())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info is not None
    assert info.reason == "MESSAGE_TOO_LARGE"
    assert info.metadata["limit"] == "20000"
    assert finished(fwd, "ForwardClick") == ["RESOURCE_EXHAUSTED"]
    assert count(url, "ForwardClick", "RESOURCE_EXHAUSTED") == 1
    # The server still serves an ordinary click.
    serves_an_ordinary_click(fwd, ws)
    assert finished(fwd, "ForwardClick", 2) == ["RESOURCE_EXHAUSTED", "OK"]


def test_a_unary_message_over_twice_the_limit_is_refused_by_grpc_alone(
    small: tuple[ForwarderProcess, str],
) -> None:
    # gRPC refuses it before any handler runs (docs/architecture.md, the error model): no
    # details, and the server goes on serving.
    fwd, _ = small
    ws = new_workspace_id()
    huge = make_click(ws, "huge", email="a@b.co", user_agent="u" * 50_000)
    with pytest.raises(grpc.RpcError) as caught:
        fwd.stub().ForwardClick(pb.ForwardClickRequest(click=huge), metadata=fwd.ingest())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    serves_an_ordinary_click(fwd, ws)


# 30 kB: over the 20 kB limit, refused by the interceptor; 50 kB: over twice the limit,
# refused by gRPC itself. Either way the server logs and counts what it sent.
@pytest.mark.parametrize("size", [30_000, 50_000])
def test_an_oversized_stream_message_is_logged_and_counted_as_sent(
    small: tuple[ForwarderProcess, str], size: int
) -> None:
    fwd, url = small
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    batches = [
        pb.StreamClicksRequest(batch_id=1, clicks=[make_click(ws, "s1", email="a@b.co")]),
        pb.StreamClicksRequest(
            batch_id=2, clicks=[make_click(ws, "s2", email="a@b.co", user_agent="u" * size)]
        ),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        list(fwd.stub().StreamClicks(iter(batches), metadata=fwd.ingest()))
    # The server ends the stream with RESOURCE_EXHAUSTED; the client sometimes sees its
    # connection's reset first (grpc's "Stream removed"). What the server sent is what it
    # logs and counts, asserted below.
    assert caught.value.code() in (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
    )
    assert finished(fwd, "StreamClicks") == ["RESOURCE_EXHAUSTED"]
    assert count(url, "StreamClicks", "RESOURCE_EXHAUSTED") == 1
    assert count(url, "StreamClicks", "UNKNOWN") == 0


@pytest.mark.parametrize("method", ["ForwardClick", "StreamClicks"])
def test_garbage_bytes_are_invalid_argument_without_an_empty_field(
    small: tuple[ForwarderProcess, str], method: str
) -> None:
    fwd, url = small
    garbage = b"\xff\xff\xff\xff\x0f"
    channel = fwd.channel()

    def call() -> object:
        if method == "ForwardClick":
            return channel.unary_unary(SERVICE + method)(garbage, metadata=fwd.ingest())
        return list(channel.stream_stream(SERVICE + method)(iter([garbage]), metadata=fwd.ingest()))

    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("invalid request: the request bytes are not a valid")
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    assert not any(d.Is(error_details_pb2.BadRequest.DESCRIPTOR) for d in status.details)
    assert finished(fwd, method) == ["INVALID_ARGUMENT"]
    assert count(url, method, "INVALID_ARGUMENT") == 1


def test_a_unary_call_without_a_request_message_ends_at_its_deadline_and_harms_nothing(
    small: tuple[ForwarderProcess, str],
) -> None:
    # gRPC's asyncio server never calls a unary handler without a message, nor answers such a
    # call (docs/architecture.md, the error model): only a hand-made client sends one, and its
    # deadline ends it. The server keeps serving.
    fwd, _ = small
    call = fwd.channel().stream_unary(SERVICE + "ForwardClick")
    with pytest.raises(grpc.RpcError) as caught:
        call(iter([]), metadata=fwd.ingest(), timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    serves_an_ordinary_click(fwd, new_workspace_id())
