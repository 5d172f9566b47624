"""Issue 14 items 2 and 9, issue 12 item 6: what intake takes, and what it stores.

Unknown protobuf fields are dropped before storing; control characters are refused; an email
is judged the same in a field and in a URL; nesting depth counts objects like Klaviyo does;
phone numbers are validated with libphonenumber and stored in E.164.
"""

from __future__ import annotations

import sqlite3

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from server.intake._validation import MAX_STORED_CLICK_BYTES
from tests.core.test_intake import details
from tests.klaviyo_mock import KlaviyoMockThread
from tests.support.calls import forward, make_click, new_key, register, wait_for
from tests.support.forwarder import ForwarderProcess
from tests.support.klaviyo import deliveries
from tests.support.openbao import new_workspace_id


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def with_unknown_field(message: pb.Click, number: int, size: int) -> pb.Click:
    """``message`` carrying an unknown length-delimited field of ``size`` bytes."""
    extra = _varint(number << 3 | 2) + _varint(size) + b"\xab" * size
    return pb.Click.FromString(message.SerializeToString() + extra)


def stored_payloads(fwd: ForwarderProcess) -> dict[str, bytes]:
    with sqlite3.connect(fwd.db_path) as db:
        return dict(db.execute("SELECT source_id, payload FROM outbox WHERE kind = 'click'"))


def maximal_click(ws: str, click_id: str) -> pb.Click:
    """A click with every field at its documented limit (multi-byte characters included)."""
    c = make_click(
        ws,
        click_id,
        email="jane@example.com",
        link_id="l" * 256,
        short_url="https://e.link/" + "s" * (8192 - 15),
        destination_url="https://shop.example/" + "d" * (8192 - 21),
        user_agent="u" * 1024,
        referrer="https://r.example/" + "r" * (2048 - 18),
    )
    for i in range(32):
        c.utm_parameters[f"utm_{i:02d}" + "k" * 38] = "é" * 1024
    c.identifiers.external_id = "x" * 256
    return c


def test_unknown_fields_are_dropped_and_the_stored_click_is_bounded(
    forwarder: ForwarderProcess,
) -> None:
    ws = new_workspace_id()
    register(forwarder, ws, new_key())
    # A 3 MiB unknown field at the top level, and more inside the nested messages.
    big = with_unknown_field(make_click(ws, "u-1", email="jane@example.com"), 999, 3 << 20)
    big.identifiers.MergeFromString(_varint(77 << 3 | 2) + _varint(100) + b"z" * 100)
    assert big.ByteSize() > 3 << 20
    reply = forwarder.stub().ForwardClick(
        pb.ForwardClickRequest(click=big), metadata=forwarder.ingest()
    )
    assert reply.disposition == pb.CLICK_DISPOSITION_QUEUED
    # The same through a stream (validated in the intake worker processes).
    streamed = [
        with_unknown_field(make_click(ws, f"u-s{i}", email="jane@example.com"), 4242, 1 << 20)
        for i in range(3)
    ]
    assert forward(forwarder, streamed, batch=1) == [pb.CLICK_DISPOSITION_QUEUED] * 3
    assert forward(forwarder, [maximal_click(ws, "u-max")]) == [pb.CLICK_DISPOSITION_QUEUED]

    payloads = stored_payloads(forwarder)
    for click_id in ("u-1", "u-s0", "u-s1", "u-s2"):
        assert pb.Click.FromString(payloads[click_id]).click_id == click_id
        assert len(payloads[click_id]) < 200, (click_id, len(payloads[click_id]))
        assert b"\xab" * 8 not in payloads[click_id]
        assert b"zzzz" not in payloads[click_id]
    assert 40_000 < len(payloads["u-max"]) <= MAX_STORED_CLICK_BYTES
    # The database grew by the bounded clicks, not by the 6 MiB of unknown bytes.
    size = forwarder.db_path.stat().st_size + (
        forwarder.db_path.with_name("forwarder.db-wal").stat().st_size
    )
    assert size < 2 << 20, size


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("click.destination_url", {"destination_url": "https://shop.example/a\x00b"}),
        ("click.short_url", {"short_url": "https://e.link/\x7f"}),
        ("click.user_agent", {"user_agent": "Mozilla/5.0\x00"}),
        ("click.referrer", {"referrer": "https://mail.example/\x00"}),
        ("click.link_id", {"link_id": "lnk\x00"}),
        ("click.utm_parameters['utm_source']", {"utm_source": "kla\x00viyo"}),
        ("click.identifiers.external_id", {"external_id": "id\x00"}),
    ],
)
def test_control_characters_are_refused_naming_the_field(
    forwarder: ForwarderProcess, field: str, change: dict[str, str]
) -> None:
    ws = new_workspace_id()
    register(forwarder, ws, new_key())
    c = make_click(ws, "nul-1", email="jane@example.com")
    for name, value in change.items():
        if name == "utm_source":
            c.utm_parameters[name] = value
        elif name == "external_id":
            c.identifiers.external_id = value
        else:
            setattr(c, name, value)
    with pytest.raises(grpc.RpcError) as caught:
        forwarder.stub().ForwardClick(pb.ForwardClickRequest(click=c), metadata=forwarder.ingest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = details(caught.value)[1]
    assert (field, "must not contain control characters (U+0000-U+001F, U+007F)") in [
        (f, d.replace("value must", "must")) for f, d in violations
    ], violations
    assert stored_payloads(forwarder) == {}


def test_a_unicode_email_is_taken_alike_from_a_field_and_from_a_url(
    forwarder: ForwarderProcess,
) -> None:
    ws = new_workspace_id()
    register(forwarder, ws, new_key())
    decomposed = "jo\u0308hn@exa\u0308mple.com"  # ö and ä as letter + combining mark
    by_field = make_click(ws, "uni-field", email=decomposed)
    by_url = make_click(
        ws, "uni-url", destination_url="https://shop.example/?email=j%C3%B6hn%40ex%C3%A4mple.com"
    )
    assert forward(forwarder, [by_field, by_url]) == [pb.CLICK_DISPOSITION_QUEUED] * 2
    with sqlite3.connect(forwarder.db_path) as db:
        emails = dict(db.execute("SELECT source_id, email FROM outbox"))
    assert emails == {"uni-field": "jöhn@exämple.com", "uni-url": "jöhn@exämple.com"}


def _nested(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


def test_nesting_depth_counts_objects_like_klaviyo(forwarder: ForwarderProcess) -> None:
    ws = new_workspace_id()
    register(forwarder, ws, new_key())

    def convert(conversion_id: str, levels: int) -> grpc.StatusCode:
        conversion = pb.Conversion(
            conversion_id=conversion_id, workspace_id=ws, identifiers={"email": "a@b.co"}
        )
        # `properties` is level 1; `levels` more objects nested inside it, then a leaf.
        conversion.properties.update({"n": _nested(levels)})
        try:
            forwarder.stub().ForwardConversion(
                pb.ForwardConversionRequest(conversion=conversion), metadata=forwarder.ingest()
            )
        except grpc.RpcError as error:
            return error.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    assert convert("nine", 9) == grpc.StatusCode.OK  # 10 levels of objects, and a leaf
    assert convert("ten", 10) == grpc.StatusCode.INVALID_ARGUMENT  # 11 levels


def test_phone_numbers_are_validated_and_normalised_to_e164(
    forwarder_factory,  # type: ignore[no-untyped-def]
    klaviyo_mock_thread: KlaviyoMockThread,
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, ws, us = new_key(), new_workspace_id(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-phone")
    register(fwd, ws, key)  # no default region: national numbers are refused
    us_key = new_key()
    klaviyo_mock_thread.add_key(us_key, "acct-us")
    register(fwd, us, us_key, default_phone_region="us")
    klaviyo_mock_thread.remove_key(us_key)  # revoked: its events stay held in the outbox

    def refused(ws_: str, phone: str) -> str:
        c = make_click(ws_, "p-bad")
        c.identifiers.phone_number = phone
        with pytest.raises(grpc.RpcError) as caught:
            fwd.stub().ForwardClick(pb.ForwardClickRequest(click=c), metadata=fwd.ingest())
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        ((field, description),) = details(caught.value)[1]
        assert field == "click.identifiers.phone_number"
        return description

    assert "default_phone_region" in refused(ws, "(415) 555-0100")
    assert "not a valid phone number" in refused(ws, "+15555555555")  # E.164 shape, unassigned
    assert "not a valid phone number" in refused(us, "555-0100")

    # 30 clicks go to Klaviyo in one bulk job: every number in them is one Klaviyo takes.
    clicks = []
    for i in range(30):
        c = make_click(ws, f"p-{i}")
        c.identifiers.phone_number = f"+1 (415) 555-{100 + i:04d}"
        clicks.append(c)
    bad = make_click(ws, "p-invalid")
    bad.identifiers.phone_number = "+1 555 555 5555"
    dispositions = forward(fwd, [*clicks[:15], bad, *clicks[15:]])
    assert dispositions.count(pb.CLICK_DISPOSITION_QUEUED) == 30
    assert dispositions[15] == pb.CLICK_DISPOSITION_REJECTED
    national = make_click(us, "p-us")
    national.identifiers.phone_number = "(415) 555-0199"
    assert forward(fwd, [national]) == [pb.CLICK_DISPOSITION_QUEUED]
    with sqlite3.connect(fwd.db_path) as db:
        (stored,) = db.execute("SELECT phone_number FROM outbox WHERE source_id='p-us'").fetchone()
    assert stored == "+14155550199"
    assert (
        fwd.stub()
        .GetIntegration(pb.GetIntegrationRequest(workspace_id=us), metadata=fwd.admin())
        .integration.settings.default_phone_region
        == "US"
    )

    wait_for(lambda: len(klaviyo_mock_thread.timeline("acct-phone")) == 30, what="30 events")
    phones = sorted(e.profile["phone_number"] for e in klaviyo_mock_thread.timeline("acct-phone"))
    assert phones == [f"+1415555{100 + i:04d}" for i in range(30)]
    mine = [r for r in deliveries(klaviyo_mock_thread.requests) if r.account == "acct-phone"]
    assert any(r.path.endswith("/event-bulk-create-jobs") for r in mine)
    assert {r.status for r in mine} == {202}


def test_an_unknown_default_phone_region_is_refused(forwarder: ForwarderProcess) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        register(forwarder, new_workspace_id(), new_key(), default_phone_region="XX")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)[1][0][0] == "settings.default_phone_region"
