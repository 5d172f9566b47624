"""Klaviyo bodies: exact JSON, validity against Klaviyo's OpenAPI spec, and job planning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server._secret import PrivateKey
from server.delivery._klaviyo import KlaviyoClient, Outcome
from server.delivery._payloads import build_bulk_job, build_event, plan_bulk_jobs
from server.delivery._properties import event_properties
from server.store._records import IntegrationSettings
from tests.klaviyo._events import T0, click, conversion
from tests.klaviyo_mock import KlaviyoMock
from tests.support.klaviyo import TEST_KEY
from tests.support.klaviyo_spec import (
    SPEC_ENV,
    SpecMissingError,
    load_spec,
    schema_errors,
    validate_bulk_job,
    validate_event_create,
)

SETTINGS = IntegrationSettings()
FRESH = T0 + 60  # "now" one minute after the click: no backfill.


def test_click_body_is_exactly_what_klaviyo_documents() -> None:
    body = build_event(click(occurred_at=T0 + 0.987, kx="kx.abc123"), SETTINGS, FRESH)
    assert body == {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {
                    "click_id": "clk_1",
                    "destination_url": "https://shop.example/p/1?utm_source=klaviyo",
                    "utm_source": "klaviyo",
                },
                "metric": {
                    "data": {"type": "metric", "attributes": {"name": "Elido Link Clicked"}}
                },
                "time": "2026-11-27T10:00:00+00:00",  # truncated to the second, UTC
                "unique_id": "clk_1",
                "profile": {
                    "data": {
                        "type": "profile",
                        "attributes": {"email": "ada@example.com", "_kx": "kx.abc123"},
                    }
                },
            },
        }
    }
    validate_event_create(body)


def test_conversion_body_carries_value_and_currency() -> None:
    body = build_event(conversion(), SETTINGS, FRESH)
    attributes = body["data"]["attributes"]
    assert attributes["value"] == 19.99
    assert attributes["value_currency"] == "EUR"
    assert attributes["metric"]["data"]["attributes"]["name"] == "Elido Conversion"
    assert attributes["unique_id"] == "conv_1"
    validate_event_create(body)


def test_conversion_without_value_sends_neither_value_nor_currency() -> None:
    attributes = build_event(conversion(value=None), SETTINGS, FRESH)["data"]["attributes"]
    assert "value" not in attributes
    assert "value_currency" not in attributes


def test_custom_metric_names_are_used() -> None:
    settings = IntegrationSettings(click_metric_name="Clicked Tracked Link")
    body = build_event(click(), settings, FRESH)
    assert body["data"]["attributes"]["metric"]["data"]["attributes"]["name"] == (
        "Clicked Tracked Link"
    )


def test_stale_events_are_backfilled_fresh_ones_are_not() -> None:
    settings = IntegrationSettings(backfill_after_s=3600)
    fresh = build_event(click(), settings, T0 + 3600)["data"]["attributes"]
    stale = build_event(click(), settings, T0 + 3601)["data"]["attributes"]
    assert fresh.get("backfill", False) is False
    assert stale["backfill"] is True
    validate_event_create(build_event(click(), settings, T0 + 3601))


def test_a_click_without_a_url_has_only_its_id_as_properties() -> None:
    body = build_event(click(url=""), SETTINGS, FRESH)
    assert body["data"]["attributes"]["properties"] == {"click_id": "clk_1"}
    validate_event_create(body)


def test_bulk_job_groups_events_under_their_profile_and_is_valid() -> None:
    events = [
        click("c1", email="a@example.com"),
        click("c2", email="b@example.com"),
        conversion("v1", email="a@example.com"),
        click("c3", email="b@example.com", occurred_at=T0 - 10 * 86400),
    ]
    body = build_bulk_job(events, SETTINGS, FRESH)
    validate_bulk_job(body)
    groups = body["data"]["attributes"]["events-bulk-create"]["data"]
    assert body["data"]["type"] == "event-bulk-create-job"
    assert [g["attributes"]["profile"]["data"]["attributes"] for g in groups] == [
        {"email": "a@example.com"},
        {"email": "b@example.com"},
    ]
    ids = [
        [e["attributes"]["unique_id"] for e in g["attributes"]["events"]["data"]] for g in groups
    ]
    assert ids == [["c1", "v1"], ["c2", "c3"]]
    b_events = groups[1]["attributes"]["events"]["data"]
    assert b_events[1]["attributes"]["backfill"] is True  # ten days old
    assert "backfill" not in b_events[0]["attributes"]
    assert all(
        "profile" not in e["attributes"] for g in groups for e in g["attributes"]["events"]["data"]
    )


def test_plan_splits_by_event_count() -> None:
    events = [click(f"c{i}", email=f"u{i}@example.com") for i in range(7)]
    jobs = plan_bulk_jobs(events, SETTINGS, FRESH, max_events=3)
    assert [[e.source_id for e in job] for job in jobs] == [
        ["c0", "c1", "c2"],
        ["c3", "c4", "c5"],
        ["c6"],
    ]


def test_plan_keeps_every_job_under_the_byte_limit() -> None:
    events = [
        click(f"c{i}", email=f"u{i % 5}@example.com", user_agent="x" * (i * 37)) for i in range(60)
    ]
    max_bytes = 4000
    jobs = plan_bulk_jobs(events, SETTINGS, FRESH, max_bytes=max_bytes)
    assert len(jobs) > 1
    assert sorted(e.source_id for job in jobs for e in job) == sorted(e.source_id for e in events)
    for job in jobs:
        size = len(
            json.dumps(
                build_bulk_job(job, SETTINGS, FRESH), separators=(",", ":"), ensure_ascii=False
            ).encode()
        )
        assert size <= max_bytes


def test_plan_puts_a_repeated_unique_id_in_a_later_job() -> None:
    first = click("dup", email="a@example.com", link_id="1")
    other = click("c2", email="b@example.com")
    repeat = click("dup", email="a@example.com", link_id="2")
    other_metric = conversion("dup", email="a@example.com")  # same id, another metric: fine
    jobs = plan_bulk_jobs([first, other, repeat, other_metric], SETTINGS, FRESH)
    assert [[e.event_id for e in job] for job in jobs] == [
        [first.event_id, other.event_id, other_metric.event_id],
        [repeat.event_id],
    ]


def test_plan_treats_a_shared_identifier_as_the_same_profile() -> None:
    # Klaviyo may resolve both to one profile: the same click id must not share a job.
    a = click("dup", email="a@example.com")
    b = click("dup", email="a@example.com", kx="kx.1")
    assert len(plan_bulk_jobs([a, b], SETTINGS, FRESH)) == 2


def test_plan_of_many_repeats_never_pairs_them() -> None:
    events = [click("same", email="a@example.com", link_id=str(i)) for i in range(4)]
    jobs = plan_bulk_jobs(events, SETTINGS, FRESH)
    links = [[event_properties(e, SETTINGS)["link_id"] for e in job] for job in jobs]
    assert links == [["0"], ["1"], ["2"], ["3"]]


async def test_the_mock_accepts_what_we_build(
    klaviyo_mock: KlaviyoMock, client: KlaviyoClient
) -> None:
    key = PrivateKey(TEST_KEY)
    single = await client.create_event(key, build_event(conversion(), SETTINGS, FRESH))
    events = [click(f"c{i}", email=f"u{i % 3}@example.com") for i in range(10)]
    bulk = await client.create_bulk_job(key, build_bulk_job(events, SETTINGS, FRESH))
    assert (single.outcome, bulk.outcome) == (Outcome.ACCEPTED, Outcome.ACCEPTED)
    timeline = klaviyo_mock.timeline()
    assert sorted(e.unique_id or "" for e in timeline) == sorted(
        ["conv_1", *(f"c{i}" for i in range(10))]
    )
    assert timeline[0].value == 19.99
    assert timeline[0].value_currency == "EUR"


def test_missing_spec_is_reported_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere" / "stable.json"
    with pytest.raises(SpecMissingError, match=r"spec was not found at .*nowhere"):
        load_spec(missing)
    monkeypatch.setenv(SPEC_ENV, str(missing))
    with pytest.raises(pytest.fail.Exception, match=r"not found at .*nowhere"):
        validate_event_create(build_event(click(), SETTINGS, FRESH))


def test_the_validator_really_rejects_bad_bodies() -> None:
    body = build_event(click(), SETTINGS, FRESH)
    body["data"]["attributes"]["time"] = "yesterday"
    del body["data"]["attributes"]["metric"]
    errors = schema_errors("EventCreateQueryV2", body)
    assert any("metric" in e for e in errors)
    assert any("date-time" in e for e in errors)
    with pytest.raises(pytest.fail.Exception, match="not a valid EventCreateQueryV2"):
        validate_event_create(body)
