"""ForwardClick, StreamClicks and ForwardConversion: dispositions, bad input, batches."""

from __future__ import annotations

import sqlite3
import time

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.support.calls import new_key
from tests.support.forwarder import BACKENDS, ForwarderProcess
from tests.support.openbao import new_workspace_id

ON_EVERY_BACKEND = pytest.mark.parametrize("store_backend", BACKENDS)


def register(fwd: ForwarderProcess, ws: str) -> None:
    fwd.stub().RegisterIntegration(
        pb.RegisterIntegrationRequest(workspace_id=ws, private_key=new_key()), metadata=fwd.admin()
    )


def click(ws: str, click_id: str, email: str = "jane@example.com", **fields: object) -> pb.Click:
    c = pb.Click(
        workspace_id=ws,
        click_id=click_id,
        destination_url="https://shop.example/p?utm_source=klaviyo",
        **fields,
    )  # type: ignore[arg-type]
    c.click_time.FromSeconds(int(time.time()) - 5)
    if email:
        c.identifiers.email = email
    return c


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The error's ``google.rpc.ErrorInfo`` detail, if it carries one."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def details(error: grpc.RpcError) -> tuple[str, list[tuple[str, str]]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details"
    info = error_info(error)
    reason, violations = info.reason if info is not None else "", []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return reason, violations


def outbox_rows(fwd: ForwarderProcess) -> int:
    db = fwd.database
    return int(db.value("SELECT count(*) FROM outbox")) + int(
        db.value("SELECT count(*) FROM clicks")
    )


@ON_EVERY_BACKEND
def test_dispositions_queued_duplicate_anonymous_no_integration(
    forwarder: ForwarderProcess,
) -> None:
    ws = new_workspace_id()
    register(forwarder, ws)
    stub, md = forwarder.stub(), forwarder.ingest()
    forward = lambda c: stub.ForwardClick(pb.ForwardClickRequest(click=c), metadata=md).disposition  # noqa: E731
    assert forward(click(ws, "a1")) == pb.CLICK_DISPOSITION_QUEUED
    assert forward(click(ws, "a1")) == pb.CLICK_DISPOSITION_DUPLICATE
    assert forward(click(ws, "a2", email="")) == pb.CLICK_DISPOSITION_ANONYMOUS
    assert forward(click(ws, "a3", email="")) == pb.CLICK_DISPOSITION_ANONYMOUS
    assert forward(click(new_workspace_id(), "a4")) == pb.CLICK_DISPOSITION_NO_INTEGRATION
    status = forwarder.stub().GetIntegration(
        pb.GetIntegrationRequest(workspace_id=ws), metadata=forwarder.admin()
    )
    assert status.integration.delivery.anonymous_click_count == 2
    assert status.integration.delivery.queued_count == 1


@ON_EVERY_BACKEND
def test_identifiers_are_read_from_the_destination_url(forwarder: ForwarderProcess) -> None:
    ws = new_workspace_id()
    register(forwarder, ws)
    c = click(ws, "u1", email="")
    c.destination_url = "https://shop.example/p?email=jane+news@example.com&utm_campaign=bf"
    assert (
        forwarder.stub()
        .ForwardClick(pb.ForwardClickRequest(click=c), metadata=forwarder.ingest())
        .disposition
        == pb.CLICK_DISPOSITION_QUEUED
    )
    email = forwarder.database.value("SELECT email FROM outbox WHERE source_id='u1'")
    assert email == "jane+news@example.com"  # the + decoded as a space is repaired


BAD_CLICKS = [
    ("click.workspace_id", dict(workspace_id="")),
    ("click.workspace_id", dict(workspace_id="has space")),
    ("click.click_id", dict(click_id="")),
    ("click.click_id", dict(click_id="x" * 129)),
    ("click.click_time", dict(click_time_s=100)),
    ("click.click_time", dict(click_time_s=int(time.time()) + 400 * 86400)),
    ("click.destination_url", dict(destination_url="ftp://x.example/a")),
    ("click.destination_url", dict(destination_url="not a url")),
    ("click.destination_url", dict(destination_url="https://x.example/" + "a" * 9000)),
    ("click.short_url", dict(short_url="/relative")),
    ("click.identifiers.email", dict(email="not-an-email")),
    ("click.identifiers.phone_number", dict(phone="0612345678")),
    ("click.identifiers.kx", dict(kx="nodot")),
    ("click.utm_parameters['source']", dict(utm={"source": "x"})),
    ("click.user_agent", dict(user_agent="u" * 2000)),
]


@pytest.mark.parametrize(
    ("field", "change"), BAD_CLICKS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_CLICKS)]
)
def test_bad_click_is_invalid_argument_naming_the_field_and_changes_nothing(
    forwarder: ForwarderProcess, field: str, change: dict[str, object]
) -> None:
    ws = new_workspace_id()
    register(forwarder, ws)
    before = outbox_rows(forwarder)
    c = click(ws, "ok-id")
    for name, value in change.items():
        if name == "click_time_s":
            c.click_time.FromSeconds(value)  # type: ignore[arg-type]
        elif name == "email":
            c.identifiers.email = value  # type: ignore[assignment]
        elif name == "phone":
            c.identifiers.phone_number = value  # type: ignore[assignment]
        elif name == "kx":
            c.identifiers.kx = value  # type: ignore[assignment]
        elif name == "utm":
            c.utm_parameters.update(value)  # type: ignore[arg-type]
        else:
            setattr(c, name, value)
    with pytest.raises(grpc.RpcError) as caught:
        forwarder.stub().ForwardClick(pb.ForwardClickRequest(click=c), metadata=forwarder.ingest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason, violations = details(caught.value)
    assert reason == "INVALID_ARGUMENT"
    assert field in [f for f, _ in violations], violations
    assert outbox_rows(forwarder) == before


def test_missing_click_and_missing_time(forwarder: ForwarderProcess) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        forwarder.stub().ForwardClick(pb.ForwardClickRequest(), metadata=forwarder.ingest())
    assert details(caught.value)[1] == [("click", "required")]
    c = pb.Click(workspace_id="w", click_id="c")
    with pytest.raises(grpc.RpcError) as caught:
        forwarder.stub().ForwardClick(pb.ForwardClickRequest(click=c), metadata=forwarder.ingest())
    assert ("click.click_time", "required") in details(caught.value)[1]


@pytest.mark.parametrize(
    ("metadata", "code", "reason"),
    [
        ([], grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        ([("authorization", "Bearer wrong")], grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        ([("authorization", "Basic abc")], grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        ("ingest", grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    ],
)
def test_admin_rpc_needs_an_admin_token(
    forwarder: ForwarderProcess, metadata: object, code: grpc.StatusCode, reason: str
) -> None:
    md = forwarder.ingest() if metadata == "ingest" else metadata
    with pytest.raises(grpc.RpcError) as caught:
        forwarder.stub().ListIntegrations(pb.ListIntegrationsRequest(), metadata=md)  # type: ignore[arg-type]
    assert caught.value.code() == code
    assert details(caught.value)[0] == reason


@ON_EVERY_BACKEND
def test_stream_acks_each_batch_after_commit_with_per_click_results(
    forwarder: ForwarderProcess,
) -> None:
    ws = new_workspace_id()
    register(forwarder, ws)
    bad = click(ws, "s-bad")
    bad.identifiers.email = "nope"
    batches = [
        pb.StreamClicksRequest(batch_id=1, clicks=[click(ws, f"s-{i}") for i in range(500)]),
        pb.StreamClicksRequest(
            batch_id=2, clicks=[click(ws, "s-0"), bad, click(ws, "s-new", email="")]
        ),
    ]
    responses = list(forwarder.stub().StreamClicks(iter(batches), metadata=forwarder.ingest()))
    assert [r.batch_id for r in responses] == [1, 2]
    assert {r.disposition for r in responses[0].results} == {pb.CLICK_DISPOSITION_QUEUED}
    second = responses[1].results
    assert [r.disposition for r in second] == [
        pb.CLICK_DISPOSITION_DUPLICATE,
        pb.CLICK_DISPOSITION_REJECTED,
        pb.CLICK_DISPOSITION_ANONYMOUS,
    ]
    assert second[1].field_violations[0].field == "clicks[1].identifiers.email"
    assert forwarder.database.value("SELECT count(*) FROM outbox WHERE workspace_id=?", ws) == 500


@pytest.mark.parametrize(
    ("batch", "field"),
    [
        (pb.StreamClicksRequest(batch_id=0, clicks=[pb.Click()]), "batch_id"),
        (pb.StreamClicksRequest(batch_id=1), "clicks"),
        (pb.StreamClicksRequest(batch_id=1, clicks=[pb.Click()] * 1001), "clicks"),
    ],
)
def test_malformed_batch_ends_the_stream_with_invalid_argument(
    forwarder: ForwarderProcess, batch: pb.StreamClicksRequest, field: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        list(forwarder.stub().StreamClicks(iter([batch]), metadata=forwarder.ingest()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in [f for f, _ in details(caught.value)[1]]
    # The server keeps serving.
    assert (
        forwarder.stub().ListIntegrations(pb.ListIntegrationsRequest(), metadata=forwarder.admin())
        is not None
    )


def test_oversized_message_and_garbage_bytes_are_refused_and_server_keeps_serving(
    forwarder: ForwarderProcess,
) -> None:
    huge = click("w", "c")
    huge.referrer = "r" * (5 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as caught:
        forwarder.stub().ForwardClick(
            pb.ForwardClickRequest(click=huge), metadata=forwarder.ingest()
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    raw = forwarder.channel().unary_unary(
        "/elido.forwarder.v1.ForwarderService/ForwardClick",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    with pytest.raises(grpc.RpcError) as caught:
        raw(b"\xff\xff\xff\xff garbage", metadata=forwarder.ingest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    health = forwarder.stub().ListIntegrations(
        pb.ListIntegrationsRequest(), metadata=forwarder.admin()
    )
    assert health is not None


@ON_EVERY_BACKEND
def test_conversion_resolves_profile_from_click_and_is_idempotent(
    forwarder: ForwarderProcess,
) -> None:
    ws = new_workspace_id()
    register(forwarder, ws)
    stub = forwarder.stub()
    stub.ForwardClick(
        pb.ForwardClickRequest(click=click(ws, "cl-1", email="buyer@example.com")),
        metadata=forwarder.ingest(),
    )
    conv = pb.Conversion(
        conversion_id="order-1", workspace_id=ws, click_id="cl-1", value=42.5, currency="EUR"
    )
    conv.properties.update({"order_id": "1001", "items": ["a", "b"]})

    def send(c):
        return stub.ForwardConversion(
            pb.ForwardConversionRequest(conversion=c), metadata=forwarder.ingest()
        )

    assert send(conv).disposition == pb.CONVERSION_DISPOSITION_QUEUED
    assert send(conv).disposition == pb.CONVERSION_DISPOSITION_DUPLICATE
    unknown = pb.Conversion(conversion_id="order-2", workspace_id=ws, click_id="never-seen")
    assert send(unknown).disposition == pb.CONVERSION_DISPOSITION_UNATTRIBUTED
    [row] = forwarder.database.rows(
        "SELECT email, value, currency FROM outbox WHERE source_id='order-1'"
    )
    assert row == ("buyer@example.com", 42.5, "EUR")
    with pytest.raises(grpc.RpcError) as caught:
        send(pb.Conversion(conversion_id="order-3", workspace_id=ws, click_id="cl-1", value=5))
    assert ("conversion.currency", "required when value is nonzero") in details(caught.value)[1]


def test_store_locked_answers_unavailable_with_retry_info_and_takes_nothing(
    forwarder_factory,  # type: ignore[no-untyped-def]
) -> None:
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_DB_BUSY_TIMEOUT_MS": "200"})
    ws = new_workspace_id()
    register(fwd, ws)
    blocker = sqlite3.connect(fwd.db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        request = pb.ForwardClickRequest(click=click(ws, "locked-1"))
        with pytest.raises(grpc.RpcError) as caught:
            fwd.stub().ForwardClick(request, metadata=fwd.ingest())
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert details(caught.value)[0] == "STORE_UNAVAILABLE"
        status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
        assert status is not None
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
        batch = pb.StreamClicksRequest(batch_id=1, clicks=[click(ws, "locked-2")])
        with pytest.raises(grpc.RpcError) as streamed:
            list(fwd.stub().StreamClicks(iter([batch]), metadata=fwd.ingest()))
        assert details(streamed.value)[0] == "STORE_UNAVAILABLE"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The retry the error asked for succeeds, and counts the click once.
    retried = fwd.stub().ForwardClick(request, metadata=fwd.ingest())
    assert retried.disposition == pb.CLICK_DISPOSITION_QUEUED
