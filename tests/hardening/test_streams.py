"""Issue 14 item 6: idle streams end, and one caller holds a bounded number of streams."""

from __future__ import annotations

import time

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.core.test_intake import details
from tests.hardening._support import Requests
from tests.hardening.test_refusals import finished
from tests.support.calls import make_click, new_key, register
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id


def reason_of(error: grpc.RpcError) -> str:
    return details(error)[0]


def test_a_stream_that_goes_silent_is_ended_with_stream_idle(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_STREAM_IDLE_TIMEOUT_S": "1.5"})
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    requests = Requests()
    call = fwd.stub().StreamClicks(iter(requests), metadata=fwd.ingest())
    requests.send(pb.StreamClicksRequest(batch_id=1, clicks=[make_click(ws, "i1", "a@b.co")]))
    assert next(call).batch_id == 1
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        next(call)  # the client sends nothing more and does not close
    waited = time.monotonic() - started
    requests.close()
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert reason_of(caught.value) == "STREAM_IDLE"
    assert 1.0 < waited < 10, waited
    assert finished(fwd, "StreamClicks") == ["UNAVAILABLE"]


def test_one_caller_holds_at_most_the_configured_streams(forwarder_factory) -> None:  # type: ignore[no-untyped-def]
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_MAX_STREAMS_PER_CALLER": "2"})
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    open_streams = []
    for n in range(2):
        requests = Requests()
        call = fwd.stub().StreamClicks(iter(requests), metadata=fwd.ingest())
        requests.send(
            pb.StreamClicksRequest(batch_id=1, clicks=[make_click(ws, f"c{n}", "a@b.co")])
        )
        assert next(call).batch_id == 1
        open_streams.append((requests, call))

    third = Requests()
    third.send(pb.StreamClicksRequest(batch_id=1, clicks=[make_click(ws, "c3", "a@b.co")]))
    with pytest.raises(grpc.RpcError) as caught:
        next(fwd.stub().StreamClicks(iter(third), metadata=fwd.ingest()))
    third.close()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(caught.value) == "TOO_MANY_STREAMS"
    # Another token is another caller: the admin token may still open a stream... but lacks
    # the ingest role, so it is refused for that reason, not for the limit.
    with pytest.raises(grpc.RpcError) as other:
        next(fwd.stub().StreamClicks(iter([]), metadata=fwd.admin()))
    assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Closing one stream frees its place.
    requests, call = open_streams.pop()
    requests.close()
    assert list(call) == []
    again = Requests()
    call = fwd.stub().StreamClicks(iter(again), metadata=fwd.ingest())
    again.send(pb.StreamClicksRequest(batch_id=1, clicks=[make_click(ws, "c4", "a@b.co")]))
    assert next(call).batch_id == 1
    again.close()
    assert list(call) == []
    for requests, call in open_streams:
        requests.close()
        assert list(call) == []
