"""The hand-written protobuf encoding (``ingest_sidecar/_wire.py``) against the generated
messages, and the extractor's wire path against its message path (seeded, bounded inputs)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, unquote

import pytest
from elido.forwarder.v1 import forwarder_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_sidecar import ExtractConfig, Extractor, Skip
from ingest_sidecar._extract import RECORD_FIELDS, _unquote
from ingest_sidecar._stream import encode_request
from ingest_sidecar._wire import ClickEncoder, varint
from tests.sidecar.helpers import click_record

SETTINGS = settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NOW = 1_795_000_000.0

# Any text protobuf can carry (no lone surrogates), short and long (multi-byte lengths).
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
short_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
int64 = st.integers(-(2**63), 2**63 - 1)
int32 = st.integers(-(2**31), 2**31 - 1)


def _click_args(draw: Any) -> dict[str, Any]:
    keys = draw(st.lists(short_text, max_size=5, unique=True))
    return {
        "click_id": draw(text),
        "workspace_id": draw(text),
        "seconds": draw(int64),
        "nanos": draw(int32),
        "link_id": draw(text),
        "short_url": draw(text),
        "destination_url": draw(st.one_of(text, st.text(min_size=200, max_size=20_000))),
        "utm_parameters": {k: draw(text) for k in sorted(keys)},
        "email": draw(text),
        "phone_number": draw(text),
        "external_id": draw(text),
        "kx": draw(text),
        "user_agent": draw(text),
        "referrer": draw(text),
    }


click_args = st.composite(_click_args)
_BEFORE_UTM = ("click_id", "workspace_id", "seconds", "nanos", "link_id", "short_url")


def _expected_bytes(args: dict[str, Any]) -> bytes:
    """The generated message's bytes, with the map entries in ``args``' order.

    protobuf writes map entries in no documented order (even deterministic=True sorts them
    its own way), so the fields before the map, each entry, and the fields after it are
    serialized by protobuf piece by piece, in field-number order.
    """
    empty = dict.fromkeys(args, "") | {"seconds": 0, "nanos": 0, "utm_parameters": {}}
    before = _message(empty | {k: args[k] for k in (*_BEFORE_UTM, "destination_url")})
    before.ClearField("identifiers")
    after = _message(
        empty
        | {
            k: args[k]
            for k in ("email", "phone_number", "external_id", "kx", "user_agent", "referrer")
        }
    )
    after.ClearField("click_time")
    entries = b"".join(
        forwarder_pb2.Click(utm_parameters={key: value}).SerializeToString()
        for key, value in args["utm_parameters"].items()
    )
    return before.SerializeToString() + entries + after.SerializeToString()


def _message(args: dict[str, Any]) -> forwarder_pb2.Click:
    return forwarder_pb2.Click(
        click_id=args["click_id"],
        workspace_id=args["workspace_id"],
        click_time={"seconds": args["seconds"], "nanos": args["nanos"]},  # type: ignore[arg-type]
        link_id=args["link_id"],
        short_url=args["short_url"],
        destination_url=args["destination_url"],
        utm_parameters=args["utm_parameters"],
        identifiers={  # type: ignore[arg-type]
            "email": args["email"],
            "phone_number": args["phone_number"],
            "external_id": args["external_id"],
            "kx": args["kx"],
        },
        user_agent=args["user_agent"],
        referrer=args["referrer"],
    )


@SETTINGS
@given(st.lists(click_args(), min_size=1, max_size=4))
def test_click_bytes_equal_the_generated_message(clicks: list[dict[str, Any]]) -> None:
    # One encoder for several clicks: its caches must not leak one click into another.
    encoder = ClickEncoder()
    for args in clicks:
        wire = encoder.click(**args)
        expected = _message(args)
        assert wire == _expected_bytes(args)
        assert forwarder_pb2.Click.FromString(wire) == expected


def test_empty_click_still_carries_its_time_and_identifiers() -> None:
    args = dict.fromkeys(
        (
            "click_id",
            "workspace_id",
            "link_id",
            "short_url",
            "destination_url",
            "email",
            "phone_number",
            "external_id",
            "kx",
            "user_agent",
            "referrer",
        ),
        "",
    )
    wire = ClickEncoder().click(seconds=0, nanos=0, utm_parameters={"": ""}, **args)
    assert (
        wire
        == _message(
            {**args, "seconds": 0, "nanos": 0, "utm_parameters": {"": ""}}
        ).SerializeToString()
    )
    parsed = forwarder_pb2.Click.FromString(wire)
    assert parsed.HasField("click_time")
    assert parsed.HasField("identifiers")


def test_caches_stay_bounded() -> None:
    encoder = ClickEncoder()
    for i in range(3 * ClickEncoder.CACHE_ENTRIES):
        args = {
            "click_id": "c",
            "workspace_id": f"ws-{i}",
            "seconds": i,
            "nanos": 0,
            "link_id": "l",
            "short_url": "",
            "destination_url": "",
            "utm_parameters": {"utm_x": str(i)},
            "email": "",
            "phone_number": "",
            "external_id": "",
            "kx": "",
            "user_agent": "u" * (ClickEncoder.CACHE_CHARS + 1),
            "referrer": "",
        }
        assert encoder.click(**args) == _message(args).SerializeToString()
    assert all(len(cache) <= ClickEncoder.CACHE_ENTRIES for cache in encoder._caches.values())
    assert len(encoder._entries) <= ClickEncoder.CACHE_ENTRIES


@SETTINGS
@given(st.one_of(int64, st.integers(0, 2**64 - 1)))
def test_varint_matches_protobuf(value: int) -> None:
    # int64 and uint64 fields number 1: the tag byte 0x08, then the varint (0 is left out).
    message: Any = (
        Timestamp(seconds=value)
        if value < 2**63
        else forwarder_pb2.StreamClicksRequest(batch_id=value)
    )
    assert message.SerializeToString() == (b"\x08" + varint(value) if value else b"")


@SETTINGS
@given(
    st.integers(1, 2**64 - 1),
    st.lists(click_args(), min_size=1, max_size=3),
)
def test_stream_request_equals_the_generated_message(
    batch_id: int, clicks: list[dict[str, Any]]
) -> None:
    encoder = ClickEncoder()
    for args in clicks:
        # At most one map entry, so that protobuf's own order of entries is the only one.
        args["utm_parameters"] = dict(list(args["utm_parameters"].items())[:1])
    serialized = [encoder.click(**args) for args in clicks]
    request = forwarder_pb2.StreamClicksRequest(
        batch_id=batch_id, clicks=[_message(args) for args in clicks]
    )
    wire = encode_request(batch_id, serialized)
    assert wire == request.SerializeToString()
    assert forwarder_pb2.StreamClicksRequest.FromString(wire) == request


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.characters(exclude_categories=("Cs",)),
            st.sampled_from(["%", "%4", "%41", "%e9", "%C3%A9", "%zz", "%%", "+", "é"]),
        ),
        max_size=40,
    ).map("".join)
)
def test_fast_unquote_equals_urllib(value: str) -> None:
    assert _unquote(value) == unquote(value)


# -- the extractor's wire path against its message path -------------------------------------

_url_text = st.lists(
    st.one_of(
        st.characters(exclude_categories=("Cs",)),
        st.sampled_from(["%40", "%2B", "%C3%A9", "+", "=", "&", "%", " "]),
    ),
    max_size=30,
).map("".join)
_parameter = st.sampled_from(
    [
        "email",
        "utm_email",
        "elido_email",
        "phone",
        "phone_number",
        "external_id",
        "_kx",
        "elido_click_id",
        "utm_source",
        "utm_campaign",
        "utm_x",
        "other",
    ]
)
_value = st.one_of(
    _url_text,
    st.sampled_from(
        [
            "ann@example.com",
            "ann%40example.com",
            "ann+tag@example.com",
            "YW5uQGV4YW1wbGUuY29t",
            " 14155550100",
            "+1 (415) 555-0100",
            "4155550100",
            "Ab%2Bcd%3D%3D.XyZ123",
            "u-9",
            "c-1",
            "bad id!",
        ]
    ),
)


@st.composite
def records(draw: Any) -> dict[str, Any]:
    query = "&".join(
        f"{name}={value}"
        for name, value in draw(st.lists(st.tuples(_parameter, _value), max_size=6))
    )
    scheme = draw(st.sampled_from(["https", "http", "HTTPS", "ftp"]))
    host = draw(st.sampled_from(["shop.example", "[::1]:8080", "bücher.example", "a b"]))
    record = click_record(
        draw(st.integers(0, 10**6)),
        destination_url=f"{scheme}://{host}/p?{query}#frag",
    )
    overrides: dict[str, Any] = draw(
        st.dictionaries(
            # Every field but the URL drawn above.
            st.sampled_from([f for f in RECORD_FIELDS if f != "destination_url"]),
            st.one_of(
                st.none(),
                _value,
                st.integers(-(10**13), 10**13),
                st.floats(allow_nan=False),
                st.sampled_from(["-", "", "2026-11-27T10:00:00+02:00", "2026-11-27T10:00:00"]),
                st.dictionaries(_url_text, st.one_of(_url_text, st.integers()), max_size=3),
                st.text(min_size=1000, max_size=3000),
            ),
            max_size=4,
        )
    )
    record.update(overrides)
    return record


def _outcome(extractor: Extractor, record: Any, wire: bool) -> Any:
    try:
        if wire:
            payload, invalid = extractor.serialize(record, now=NOW)
            return forwarder_pb2.Click.FromString(payload), invalid
        extracted = extractor.extract(record, now=NOW)
        return extracted.click, extracted.invalid_identifiers
    except Skip as exc:
        return "skip", exc.reason, exc.detail


@SETTINGS
@given(st.lists(records(), min_size=1, max_size=5), st.booleans())
def test_serialize_equals_extract(batch: list[dict[str, Any]], anonymous: bool) -> None:
    config = ExtractConfig(forward_anonymous=anonymous)
    by_message = Extractor(config)
    by_wire = Extractor(config)
    for record in batch:
        # Records without a click id and time get generated ids: give both the same one.
        if not record.get("click_id") and record.get("click_time") in (None, "", "-"):
            record["click_id"] = "gen-1"
        assert _outcome(by_wire, record, True) == _outcome(by_message, record, False)


@pytest.mark.parametrize(
    "record",
    [[], "x", 1, None, {"workspace_id": "ws-1"}, click_record(1, workspace_id="bad id")],
)
def test_serialize_skips_like_extract(record: Any) -> None:
    extractor = Extractor(ExtractConfig())
    assert _outcome(extractor, record, True) == _outcome(extractor, record, False)


def test_serialize_with_a_log_field_mapping() -> None:
    mapping = {"workspace_id": "ws", "destination_url": "req.location"}
    line = {
        **click_record(3),
        "ws": "ws-9",
        "req": {"location": "https://a.example/?email=a%40b.co"},
    }
    del line["workspace_id"], line["destination_url"]
    extractor = Extractor(ExtractConfig())
    payload, _ = extractor.serialize(json.loads(json.dumps(line)), mapping, now=NOW)
    click = forwarder_pb2.Click.FromString(payload)
    assert click == extractor.extract(line, mapping, now=NOW).click
    assert (click.workspace_id, click.identifiers.email) == ("ws-9", "a@b.co")


def test_quote_roundtrip_through_the_fast_unquote() -> None:
    value = "ann+tag@exämple.com & co"
    assert _unquote(quote(value)) == value
