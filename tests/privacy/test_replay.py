"""Replay of failed events by time range, error and kind, with a dry run, end to end: the
real forwarder (both backends), OpenBao, gRPC, the Klaviyo mock and ``elido-fwd``."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from google.protobuf import duration_pb2

from tests.klaviyo_mock import Fault, FaultKind, KlaviyoMockThread
from tests.privacy.test_erasure import _cli
from tests.support.calls import forward, integration, make_click, new_key, register, wait_for
from tests.support.forwarder import BACKENDS, ForwarderProcess
from tests.support.openbao import new_workspace_id

ON_EVERY_BACKEND = pytest.mark.parametrize("store_backend", BACKENDS)


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


@ON_EVERY_BACKEND
def test_replay_by_time_range_and_kind_with_a_dry_run(
    forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread, tmp_path: Path
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws = new_key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-replay")
    register(fwd, ws, key, backfill_after=duration_pb2.Duration(seconds=3600))

    def fail_next(n: int) -> None:
        klaviyo_mock_thread.inject(
            Fault(FaultKind.STATUS, status=400, count=n, account="acct-replay")
        )

    # First wave: a stale click and a fresh one fail.
    fail_next(2)
    forward(
        fwd,
        [
            make_click(ws, "stale-1", email="r@example.com", age_s=2 * 3600),
            make_click(ws, "fresh-1", email="r@example.com", age_s=5),
        ],
    )
    wait_for(lambda: integration(fwd, ws).delivery.failed_count == 2, what="first wave failed")
    between = time.time()
    time.sleep(0.05)
    # Second wave: a conversion and another click fail.
    fail_next(2)
    conversion = pb.Conversion(
        workspace_id=ws, conversion_id="conv-1", click_id="x", value=3.0, currency="EUR"
    )
    conversion.identifiers.email = "r@example.com"
    fwd.stub().ForwardConversion(
        pb.ForwardConversionRequest(conversion=conversion), metadata=fwd.ingest()
    )
    forward(fwd, [make_click(ws, "fresh-2", email="r@example.com", age_s=5)])
    wait_for(lambda: integration(fwd, ws).delivery.failed_count == 4, what="second wave failed")

    # Dry runs count without changing anything.
    dry = _cli(
        fwd, tmp_path, "failed", "replay", "--workspace", ws,
        "--failed-after", _iso(between), "--dry-run",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == "Would replay 2 events (dry run).\n"
    stub = fwd.stub()
    only_conversions = stub.ReplayFailedEvents(
        pb.ReplayFailedEventsRequest(
            workspace_id=ws, kind=pb.EVENT_KIND_CONVERSION, error_contains="KLAVIYO", dry_run=True
        ),
        metadata=fwd.admin(),
    )
    assert (only_conversions.replayed_count, only_conversions.dry_run) == (1, True)
    assert integration(fwd, ws).delivery.failed_count == 4

    # The first wave, clicks only, for real.
    result = _cli(
        fwd, tmp_path, "--json", "failed", "replay", "--workspace", ws,
        "--failed-before", _iso(between), "--kind", "click",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"replayed_count": "2", "dry_run": False}
    wait_for(lambda: len(klaviyo_mock_thread.timeline("acct-replay")) == 2, what="replayed")
    delivered = {e.unique_id: e.backfill for e in klaviyo_mock_thread.timeline("acct-replay")}
    # Their unique ids kept; the stale one still goes as backfill.
    assert delivered == {"stale-1": True, "fresh-1": False}
    left = stub.ListFailedEvents(pb.ListFailedEventsRequest(workspace_id=ws), metadata=fwd.admin())
    assert {e.source_id for e in left.failed_events} == {"conv-1", "fresh-2"}


@ON_EVERY_BACKEND
def test_replay_filters_are_validated(forwarder_factory: Any) -> None:
    fwd: ForwarderProcess = forwarder_factory()
    key, ws = new_key(), new_workspace_id()
    register(fwd, ws, key)
    stub = fwd.stub()
    later, earlier = pb.ReplayFailedEventsRequest(), pb.ReplayFailedEventsRequest()
    later.failed_after.FromSeconds(2_000_000_000)
    earlier.failed_before.FromSeconds(1_000_000_000)
    cases = {
        "event_ids": pb.ReplayFailedEventsRequest(workspace_id=ws),
        "failed_before": pb.ReplayFailedEventsRequest(
            workspace_id=ws, failed_after=later.failed_after, failed_before=earlier.failed_before
        ),
        "all": pb.ReplayFailedEventsRequest(workspace_id=ws, all=True, kind=pb.EVENT_KIND_CLICK),
        "kind": pb.ReplayFailedEventsRequest(workspace_id=ws, kind=7),  # type: ignore[arg-type]
        "error_contains": pb.ReplayFailedEventsRequest(workspace_id=ws, error_contains="x" * 300),
    }
    for field, request in cases.items():
        with pytest.raises(grpc.RpcError) as caught:
            stub.ReplayFailedEvents(request, metadata=fwd.admin())
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, field
        assert field in error.details(), (field, error.details())
    assert integration(fwd, ws).delivery.failed_count == 0
