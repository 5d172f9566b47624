"""Calls that arrange and observe a forwarder under test (shared by the test folders)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

import grpc
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.support.forwarder import ForwarderProcess


def new_key() -> str:
    return "pk_" + secrets.token_hex(17)


def register(fwd: ForwarderProcess, ws: str, key: str, **settings: object) -> pb.Integration:
    return (
        fwd.stub()
        .RegisterIntegration(
            pb.RegisterIntegrationRequest(
                workspace_id=ws, private_key=key, settings=pb.IntegrationSettings(**settings)
            ),  # type: ignore[arg-type]
            metadata=fwd.admin(),
        )
        .integration
    )


def make_click(
    ws: str, click_id: str, email: str = "", age_s: float = 1.0, **fields: object
) -> pb.Click:
    c = pb.Click(workspace_id=ws, click_id=click_id, **fields)  # type: ignore[arg-type]
    c.click_time.FromNanoseconds(int((time.time() - age_s) * 1e9))
    if email:
        c.identifiers.email = email
    return c


def forward(fwd: ForwarderProcess, clicks: Sequence[pb.Click], batch: int = 500) -> list[int]:
    requests = [
        pb.StreamClicksRequest(batch_id=i + 1, clicks=clicks[s : s + batch])
        for i, s in enumerate(range(0, len(clicks), batch))
    ]
    dispositions: list[int] = []
    for response in fwd.stub().StreamClicks(iter(requests), metadata=fwd.ingest()):
        dispositions.extend(r.disposition for r in response.results)
    return dispositions


def integration(fwd: ForwarderProcess, ws: str) -> pb.Integration:
    return (
        fwd.stub()
        .GetIntegration(pb.GetIntegrationRequest(workspace_id=ws), metadata=fwd.admin())
        .integration
    )


def wait_for(
    predicate: Callable[[], bool], timeout_s: float = 20.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def rpc_code(fn: Callable[[], object]) -> grpc.StatusCode:
    try:
        fn()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK
