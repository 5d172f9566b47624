"""Several forwarder processes on one store: they agree, share an account's limits, survive
each other's deaths and pauses, and ride out a database restart.

Replicas are real ``python -m server`` processes on one PostgreSQL database (or one SQLite
file), killed with SIGKILL and frozen with SIGSTOP; Klaviyo is the mock, with tight limits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.klaviyo_mock import KlaviyoMockThread, WindowLimit
from tests.support.calls import forward, make_click, new_key, register, wait_for
from tests.support.forwarder import BACKENDS, ForwarderProcess
from tests.support.klaviyo import TEST_KEY
from tests.support.openbao import new_workspace_id
from tests.support.postgres import PostgresServer

LEASE_TTL_S = 2.0


def replicas(
    factory: Any,
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    count: int,
    env: dict[str, str] | None = None,
    klaviyo_urls: list[str] | None = None,
) -> list[ForwarderProcess]:
    """``count`` forwarders on one store of ``backend``."""
    shared: dict[str, Any] = {}
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        shared["database_url"] = server.create_database()
    settings = {
        "FORWARDER_LEASE_TTL_S": str(LEASE_TTL_S),
        **({} if backend == "postgres" else {"FORWARDER_DB_PATH": str(tmp_path / "shared.db")}),
        **(env or {}),
    }
    urls = klaviyo_urls or ["http://127.0.0.1:9"] * count
    return [
        factory(klaviyo_url=urls[i], env=settings, name=f"replica-{'abc'[i]}", **shared)
        for i in range(count)
    ]


def forward_one(fwd: ForwarderProcess, click: pb.Click) -> int:
    response = fwd.stub().ForwardClick(pb.ForwardClickRequest(click=click), metadata=fwd.ingest())
    return int(response.disposition)


@pytest.mark.parametrize("store_backend", BACKENDS)
def test_a_registration_or_removal_on_one_replica_holds_on_the_other_at_once(
    forwarder_factory: Any, store_backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    a, b = replicas(
        forwarder_factory, store_backend, tmp_path, request, 2, {"FORWARDER_DELIVERY": "off"}
    )
    ws = new_workspace_id()
    email = "shared@example.com"
    assert forward_one(b, make_click(ws, "c0", email)) == pb.CLICK_DISPOSITION_NO_INTEGRATION
    register(a, ws, new_key())
    # Unary and streamed (the stream goes through B's intake workers on SQLite).
    assert forward_one(b, make_click(ws, "c1", email)) == pb.CLICK_DISPOSITION_QUEUED
    assert forward(b, [make_click(ws, "c2", email)]) == [pb.CLICK_DISPOSITION_QUEUED]
    a.stub().RemoveIntegration(pb.RemoveIntegrationRequest(workspace_id=ws), metadata=a.admin())
    assert forward_one(b, make_click(ws, "c3", email)) == pb.CLICK_DISPOSITION_NO_INTEGRATION
    assert forward(b, [make_click(ws, "c4", email)]) == [pb.CLICK_DISPOSITION_NO_INTEGRATION]
    assert b.database.value("SELECT count(*) FROM outbox WHERE workspace_id = ?", ws) == 0


def lease_owner(fwd: ForwarderProcess, held: bool = True) -> str:
    """Who holds (or, with ``held=False``, last held) the account's delivery lease."""
    where = " AND expires_at > 0" if held else ""
    rows = fwd.database.rows(f"SELECT owner FROM leases WHERE name LIKE 'account:%'{where}")
    return str(rows[0][0]) if rows else ""


@pytest.mark.slow
def test_three_replicas_share_the_account_limits_and_survive_two_kills(
    forwarder_factory: Any,
    klaviyo_mock_thread: KlaviyoMockThread,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    mock = klaviyo_mock_thread
    mock.set_limits(account="acct", events=WindowLimit(6, 120))
    fleet = replicas(
        forwarder_factory,
        "postgres",
        tmp_path,
        request,
        3,
        # Single events only, so that the tight per-second limit is what paces delivery.
        {"FORWARDER_SINGLE_THRESHOLD": "100000", "KLAVIYO_EVENTS_BURST_PER_S": "6",
         "KLAVIYO_EVENTS_STEADY_PER_MIN": "120"},
        [mock.base_url] * 3,
    )  # fmt: skip
    a, b, c = fleet
    # Two workspaces registered with one key: one Klaviyo account, one set of limits.
    ws1, ws2 = new_workspace_id(), new_workspace_id()
    register(a, ws1, TEST_KEY)
    register(b, ws2, TEST_KEY)
    # The registrations' key checks are requests the forwarder's limiter does not count
    # (operator guide, "The key check"); this test holds delivery alone to the limits.
    mock.forget_window_usage()
    clicks = {
        fwd: [
            make_click(ws, f"{fwd.data_dir.name}-{i}", f"p{i % 7}@example.com")
            for i, ws in enumerate([ws1, ws2] * 12)
        ]
        for fwd in fleet
    }
    for fwd, batch in clicks.items():
        assert set(forward(fwd, batch)) == {pb.CLICK_DISPOSITION_QUEUED}
    # A conversion sent to C, citing a click A took.
    conversion = pb.Conversion(
        conversion_id="order-1", workspace_id=ws1, click_id=f"{a.data_dir.name}-0", value=12.5,
        currency="EUR",
    )  # fmt: skip
    answer = c.stub().ForwardConversion(
        pb.ForwardConversionRequest(conversion=conversion), metadata=c.ingest()
    )
    assert answer.disposition == pb.CONVERSION_DISPOSITION_QUEUED
    expected = {click.click_id for batch in clicks.values() for click in batch} | {"order-1"}

    # Mid-delivery, the owner of the account's lease and one other replica die.
    wait_for(lambda: len(mock.timeline()) >= 15, 30, "the first deliveries")
    owner = lease_owner(a)
    doomed = [f for f in fleet if f.data_dir.name == owner]
    doomed += [f for f in fleet if f.data_dir.name != owner][:1]
    for fwd in doomed:
        fwd.kill()
    killed_at = time.time()
    assert len(mock.timeline()) < len(expected), "delivery finished before the kills"
    survivor = next(f for f in fleet if f not in doomed)

    wait_for(lambda: len(mock.timeline()) >= len(expected), 90, "every event on the timeline")
    timeline = mock.timeline()
    assert Counter(e.unique_id for e in timeline) == Counter(expected)
    attributed = next(e for e in timeline if e.unique_id == "order-1")
    assert attributed.profile["email"] == "p0@example.com"  # the clicker of replica-a-0
    assert mock.throttled_count == 0
    assert lease_owner(survivor, held=False) == survivor.data_dir.name
    # The survivor took over on the scale of the lease's TTL (it waits out the TTL, then the
    # burst window the dead owner may have filled); bench/delivery.py measures it.
    after = [e.received_at for e in timeline if e.received_at > killed_at]
    assert after
    assert min(after) - killed_at < LEASE_TTL_S + 10


@pytest.mark.slow
def test_a_frozen_replica_sends_nothing_for_an_account_taken_over(
    forwarder_factory: Any,
    klaviyo_mock_thread: KlaviyoMockThread,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    mock = klaviyo_mock_thread
    mock.set_limits(account="acct", events=WindowLimit(4, 240))
    port = mock.base_url.rsplit(":", 1)[1]
    # Each replica reaches the mock under its own host name, so the mock tells them apart.
    a, b = replicas(
        forwarder_factory,
        "postgres",
        tmp_path,
        request,
        2,
        {"FORWARDER_SINGLE_THRESHOLD": "100000", "KLAVIYO_EVENTS_BURST_PER_S": "4"},
        [f"http://localhost:{port}", f"http://127.0.0.1:{port}"],
    )
    ws = new_workspace_id()
    register(a, ws, TEST_KEY)
    # The registrations' key checks are requests the forwarder's limiter does not count
    # (operator guide, "The key check"); this test holds delivery alone to the limits.
    mock.forget_window_usage()
    assert set(forward(a, [make_click(ws, f"f{i}", "frozen@example.com") for i in range(40)])) == {
        pb.CLICK_DISPOSITION_QUEUED
    }
    wait_for(lambda: len(mock.timeline()) >= 4, 20, "the first deliveries")
    wait_for(lambda: lease_owner(a) != "", 10, "an owner of the account's lease")
    frozen, other = (a, b) if lease_owner(a) == a.data_dir.name else (b, a)
    host = {a: f"localhost:{port}", b: f"127.0.0.1:{port}"}
    assert frozen.process is not None
    os.kill(frozen.process.pid, signal.SIGSTOP)
    frozen_at = time.time()
    try:
        wait_for(
            lambda: lease_owner(other) == other.data_dir.name, LEASE_TTL_S + 5, "the take-over"
        )
        time.sleep(0.5)
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
    wait_for(lambda: len(mock.timeline()) >= 40, 60, "every click delivered")
    time.sleep(1.0)  # room for anything the frozen replica might still have wanted to send
    late = [
        r
        for r in mock.requests
        if r.header("host") == host[frozen] and r.received_at > frozen_at + 0.2
    ]
    assert not late, f"{len(late)} requests from the frozen replica after it lost its lease"
    assert [r for r in mock.requests if r.header("host") == host[other]]
    assert mock.throttled_count == 0
    # The frozen replica noticed: it stopped delivering that account.
    assert "lease" in frozen.logs()


@pytest.mark.slow
def test_postgres_restart_mid_stream_answers_unavailable_and_loses_nothing(
    forwarder_factory: Any, postgres_server: PostgresServer
) -> None:
    fwd: ForwarderProcess = forwarder_factory(
        database_url=postgres_server.create_database(), env={"FORWARDER_DELIVERY": "off"}
    )
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    acked: set[str] = set()
    refused: list[grpc.RpcError] = []
    stop = threading.Event()

    def send_forever() -> None:
        i = 0
        while not stop.is_set():
            click = make_click(ws, f"r{i}", "restart@example.com")
            try:
                if forward_one(fwd, click) == pb.CLICK_DISPOSITION_QUEUED:
                    acked.add(click.click_id)
                    i += 1
            except grpc.RpcError as error:
                refused.append(error)  # the same click is sent again: ids are idempotent
                time.sleep(0.1)

    sender = threading.Thread(target=send_forever)
    sender.start()
    try:
        wait_for(lambda: len(acked) >= 20, 20, "clicks before the restart")
        postgres_server.stop()
        try:
            wait_for(lambda: len(refused) >= 2, 30, "refusals while the database is down")
            batch = pb.StreamClicksRequest(
                batch_id=1, clicks=[make_click(ws, "s1", "x@example.com")]
            )
            with pytest.raises(grpc.RpcError) as streamed:
                list(fwd.stub().StreamClicks(iter([batch]), metadata=fwd.ingest()))
            assert streamed.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            postgres_server.start()
        before = len(acked)
        wait_for(lambda: len(acked) >= before + 20, 30, "clicks after the restart")
    finally:
        stop.set()
        sender.join()
    for error in refused:
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
        assert status is not None
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    stored = {
        row[0]
        for row in fwd.database.rows("SELECT source_id FROM outbox WHERE workspace_id = ?", ws)
    }
    assert acked <= stored
    assert fwd.process is not None
    assert fwd.process.poll() is None
