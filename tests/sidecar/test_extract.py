import base64
from typing import Any
from urllib.parse import quote

import pytest

from ingest_sidecar import ExtractConfig, Extractor, Skip
from tests.sidecar.helpers import click_record

NOW = 1_795_000_000.0  # 2026-11-18


def extract(record: dict[str, Any], **config: Any) -> Any:
    return Extractor(ExtractConfig(**config)).extract(record, now=NOW)


def with_query(query: str, **overrides: Any) -> dict[str, Any]:
    return click_record(1, destination_url=f"https://shop.example/p?{query}", **overrides)


@pytest.mark.parametrize(
    ("query", "email"),
    [
        ("email=ann@example.com", "ann@example.com"),
        ("email=ann%40example.com", "ann@example.com"),
        # `{{ person.email|urlencode }}` inside an already-encoded link.
        ("email=ann%2540example.com", "ann@example.com"),
        # A raw `+` in an unencoded address arrives as a space.
        ("email=ann+tag@example.com", "ann+tag@example.com"),
        ("utm_email=" + base64.b64encode(b"ann+tag@example.com").decode(), "ann+tag@example.com"),
        ("elido_email=" + quote(base64.b64encode(b"bob@example.org").decode()), "bob@example.org"),
        ("elido_email=" + base64.b64encode(b"bo@x.io").decode().rstrip("="), "bo@x.io"),
    ],
)
def test_email_forms_are_decoded(query: str, email: str) -> None:
    click = extract(with_query(query)).click
    assert click.identifiers.email == email


def test_invalid_email_is_ignored_and_reported() -> None:
    result = extract(with_query("email=not-an-email&_kx=abc.DEF123"))
    assert result.click.identifiers.email == ""
    assert result.click.identifiers.kx == "abc.DEF123"
    assert result.invalid_identifiers == ["email"]


def test_kx_phone_and_external_id() -> None:
    result = extract(with_query("_kx=Ab%2Bcd%3D%3D.XyZ123&phone=+14155550100&external_id=u-9"))
    ids = result.click.identifiers
    assert ids.kx == "Ab+cd==.XyZ123"
    # `+` unencoded became a space; the number is repaired into E.164.
    assert ids.phone_number == "+14155550100"
    assert ids.external_id == "u-9"


def test_phone_without_country_code_is_invalid() -> None:
    result = extract(with_query("phone=4155550100&external_id=x"))
    assert result.click.identifiers.phone_number == ""
    assert result.invalid_identifiers == ["phone_number"]


def test_record_identifiers_win_over_the_url() -> None:
    click = extract(with_query("email=url@example.com", email="rec@example.com")).click
    assert click.identifiers.email == "rec@example.com"


def test_every_utm_parameter_is_kept_but_identifier_parameters_are_not() -> None:
    record = with_query(
        "utm_source=kl&utm_medium=email&utm_campaign=Black%20Friday&utm_custom1=x"
        "&utm_email=ann%40example.com&other=1"
    )
    click = extract(record).click
    assert dict(click.utm_parameters) == {
        "utm_source": "kl",
        "utm_medium": "email",
        "utm_campaign": "Black Friday",
        "utm_custom1": "x",
    }
    assert click.identifiers.email == "ann@example.com"


def test_anonymous_clicks_are_dropped_unless_forwarding_is_on() -> None:
    record = with_query("utm_source=x")
    with pytest.raises(Skip) as caught:
        extract(record)
    assert caught.value.reason == "anonymous"
    # A URL without any query is the same case.
    with pytest.raises(Skip):
        extract(click_record(1, destination_url="https://shop.example/"))
    click = extract(record, forward_anonymous=True).click
    assert not click.identifiers.ListFields()


def test_click_id_sources() -> None:
    with_param = with_query("elido_click_id=from-url&email=a@b.co", click_id=None)
    assert extract(with_param).click.click_id == "from-url"
    with pytest.raises(Skip) as caught:
        extract(with_query("email=a@b.co", click_id="bad id!"))
    assert caught.value.reason == "invalid_click_id"


def test_generated_ids_are_time_ordered_and_unique() -> None:
    extractor = Extractor(ExtractConfig())
    record = with_query("email=a@b.co", click_id=None, click_time=None)
    ids = [extractor.extract(record, now=NOW + i / 10_000).click.click_id for i in range(2000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_ids_for_timestamped_records_are_stable() -> None:
    record = with_query("email=a@b.co", click_id=None)
    first = Extractor(ExtractConfig()).extract(record, now=NOW).click.click_id
    again = Extractor(ExtractConfig()).extract(dict(record), now=NOW + 5).click.click_id
    other = Extractor(ExtractConfig()).extract({**record, "link_id": "l2"}, now=NOW).click
    assert first == again
    assert other.click_id != first


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"workspace_id": None}, "missing_workspace_id"),
        ({"workspace_id": "has space"}, "invalid_workspace_id"),
        ({"workspace_id": "w" * 65}, "invalid_workspace_id"),
        ({"workspace_id": ["ws"]}, "wrong_type"),
        ({"destination_url": "ftp://x/y?email=a@b.co"}, "invalid_url"),
        ({"destination_url": "/relative?email=a@b.co"}, "invalid_url"),
        ({"destination_url": "https://x/?email=a@b.co&p=" + "a" * 9000}, "url_too_long"),
        ({"destination_url": {"u": 1}}, "wrong_type"),
        ({"click_time": "1999-12-31T23:00:00+00:00"}, "invalid_time"),
        ({"click_time": "yesterday"}, "invalid_time"),
        ({"click_time": "2026-11-27T10:00:00"}, "invalid_time"),
        ({"click_time": NOW + 2 * 366 * 86400}, "invalid_time"),
        ({"click_time": True}, "wrong_type"),
        ({"utm_parameters": ["utm_source"]}, "wrong_type"),
    ],
)
def test_bad_fields_are_skipped_with_a_reason(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(Skip) as caught:
        extract(click_record(1, **overrides))
    assert caught.value.reason == reason


def test_epoch_times_and_truncation() -> None:
    record = click_record(
        1,
        click_time=str(NOW - 3.25),
        user_agent="é" * 2000,
        referrer="https://r.example/" + "x" * 3000,
    )
    click = extract(record).click
    assert click.click_time.seconds == int(NOW - 4)
    assert click.click_time.nanos == 750_000_000
    assert len(click.user_agent.encode()) <= 1024
    assert click.referrer == ""
    millis = extract(click_record(1, click_time=int(NOW * 1000))).click
    assert millis.click_time.seconds == int(NOW)


def test_not_an_object() -> None:
    with pytest.raises(Skip) as caught:
        extract([1, 2])  # type: ignore[arg-type]
    assert caught.value.reason == "not_an_object"


def test_field_mapping_reads_nested_log_fields() -> None:
    record = {
        "ws": "w1",
        "resp": {"location": "https://a.example/?email=z@y.io"},
        "time": "2026-11-27T10:00:00+00:00",
        "ua": "-",
    }
    mapping = {
        "workspace_id": "ws",
        "destination_url": "resp.location",
        "click_time": "time",
        "user_agent": "ua",
    }
    click = Extractor(ExtractConfig()).extract(record, mapping, now=NOW).click
    assert (click.workspace_id, click.identifiers.email, click.user_agent) == ("w1", "z@y.io", "")


@pytest.mark.parametrize(
    "query",
    [
        "email=jane+vip@example.com",
        "email=amFuZUBleGFtcGxlLmNvbQ==",
        "email=jane%252Bvip%2540example.com",
        "_kx=abc.DEF123",
        "_kx=Ab%2Bcd%3D%3D.XyZ123",
        "phone=+14155550100",
        "phone=%2B44%2020%207946%200958",
        "external_id=" + "x" * 256,
    ],
)
def test_identifiers_the_edge_keeps_are_ones_the_server_accepts(query: str) -> None:
    from server.intake._validation import validate_click

    click = extract(with_query(query)).click
    assert any(
        getattr(click.identifiers, f) for f in ("email", "phone_number", "external_id", "kx")
    )
    checked = validate_click(click, "click", lambda _ws: None)
    assert not isinstance(checked, list), checked
