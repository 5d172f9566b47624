"""Body checks for Create Event and Bulk Create Events, hand-written from CONTRACT.md.

Independent of the forwarder's payload code on purpose: a bug there must not be mirrored here.
Where the spec and Klaviyo's ingestion docs disagree, the stricter number wins (300 properties,
10 nesting levels, 4000 array items, times from 2000 to now + 1 year).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import phonenumbers

from tests.klaviyo_mock._errors import ApiError, invalid

MAX_PROPERTIES: Final = 300
MAX_STRING_BYTES: Final = 100 * 1024
MAX_METRIC_NAME: Final = 127  # "less than 128 characters"
MAX_NESTING: Final = 10
MAX_ARRAY_ITEMS: Final = 4000
MAX_BULK_EVENTS: Final = 1000
MAX_PAYLOAD_BYTES: Final = 5 * 1024 * 1024
MIN_TIME: Final = datetime(2000, 1, 1, tzinfo=UTC)

IDENTIFIERS: Final = ("email", "phone_number", "external_id", "_kx", "anonymous_id")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_EVENT_KEYS: Final = frozenset(
    {"properties", "time", "value", "value_currency", "unique_id", "backfill", "metric", "profile"}
)
_BULK_EVENT_KEYS: Final = _EVENT_KEYS - {"profile"}
_PROFILE_KEYS: Final = frozenset(
    {
        *IDENTIFIERS,
        "first_name",
        "last_name",
        "organization",
        "locale",
        "title",
        "image",
        "location",
        "properties",
    }
)


@dataclass(frozen=True, slots=True)
class EventIn:
    """One validated event, ready to be recorded."""

    metric: str
    profile: dict[str, Any]
    identity: str
    unique_id: str | None
    time: str | None
    properties: dict[str, Any]
    value: float | None
    value_currency: str | None
    backfill: bool
    attributes: dict[str, Any]


def profile_identity(attributes: dict[str, Any]) -> str:
    """The identifier a profile is resolved by: email first, then phone, external id, _kx."""
    for name in IDENTIFIERS:
        value = attributes.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value.lower() if name == 'email' else value}"
    return ""


def parse_event_create(body: Any, now: datetime) -> EventIn:
    """Checks an ``EventCreateQueryV2`` body."""
    data = _object(_object(body, "").get("data"), "/data")
    _type(data, "event", "/data")
    attributes = _object(data.get("attributes"), "/data/attributes")
    profile_data = _resource(attributes.get("profile"), "profile", "/data/attributes/profile")
    profile = _profile(profile_data, "/data/attributes/profile/data/attributes")
    return _event(attributes, profile, None, now, "/data/attributes", _EVENT_KEYS)


def parse_bulk_job(body: Any, now: datetime) -> list[EventIn]:
    """Checks an ``EventsBulkCreateJob`` body; a repeated unique_id fails the whole job."""
    data = _object(_object(body, "").get("data"), "/data")
    _type(data, "event-bulk-create-job", "/data")
    attributes = _object(data.get("attributes"), "/data/attributes")
    container = _object(attributes.get("events-bulk-create"), "/data/attributes/events-bulk-create")
    groups = container.get("data")
    pointer = "/data/attributes/events-bulk-create/data"
    if not isinstance(groups, list):
        raise invalid("Expected an array.", pointer)
    if not groups:
        raise invalid("At least one profile with events is required.", pointer)
    events: list[EventIn] = []
    seen: set[tuple[str, str, str]] = set()
    for g, group in enumerate(groups):
        where = f"{pointer}/{g}"
        group = _object(group, where)
        _type(group, "event-bulk-create", where)
        group_attributes = _object(group.get("attributes"), f"{where}/attributes")
        group_backfill = _optional_bool(group_attributes, "backfill", f"{where}/attributes")
        profile_data = _resource(
            group_attributes.get("profile"), "profile", f"{where}/attributes/profile"
        )
        profile = _profile(profile_data, f"{where}/attributes/profile/data/attributes")
        entries = _object(group_attributes.get("events"), f"{where}/attributes/events").get("data")
        if not isinstance(entries, list) or not entries:
            raise invalid(
                "Expected a non-empty array of events.", f"{where}/attributes/events/data"
            )
        for e, entry in enumerate(entries):
            entry_where = f"{where}/attributes/events/data/{e}"
            entry = _object(entry, entry_where)
            _type(entry, "event", entry_where)
            entry_attributes = _object(entry.get("attributes"), f"{entry_where}/attributes")
            event = _event(
                entry_attributes,
                profile,
                group_backfill,
                now,
                f"{entry_where}/attributes",
                _BULK_EVENT_KEYS,
            )
            if len(events) >= MAX_BULK_EVENTS:
                raise invalid(f"A job may contain at most {MAX_BULK_EVENTS} events.", pointer)
            if event.unique_id is not None:
                key = (event.identity, event.metric, event.unique_id)
                if key in seen:
                    raise invalid(
                        f"Duplicate unique_id '{event.unique_id}' for the same profile and "
                        "metric in one job; no events were processed.",
                        f"{entry_where}/attributes/unique_id",
                    )
                seen.add(key)
            events.append(event)
    return events


def _event(
    attributes: dict[str, Any],
    profile: dict[str, Any],
    group_backfill: bool | None,
    now: datetime,
    where: str,
    allowed: frozenset[str],
) -> EventIn:
    unknown = sorted(set(attributes) - allowed)
    if unknown:
        raise invalid(
            f"'{unknown[0]}' is not a valid field for the resource 'event'.",
            f"{where}/{unknown[0]}",
        )
    if "properties" not in attributes:
        raise invalid("'properties' is a required field.", f"{where}/properties")
    properties = _object(attributes["properties"], f"{where}/properties")
    if len(properties) > MAX_PROPERTIES:
        raise invalid(
            f"An event may have at most {MAX_PROPERTIES} properties.", f"{where}/properties"
        )
    _check_value(properties, f"{where}/properties", 1)
    metric = _resource(attributes.get("metric"), "metric", f"{where}/metric")
    metric_attributes = metric["attributes"]
    name = metric_attributes.get("name")
    name_where = f"{where}/metric/data/attributes/name"
    if not isinstance(name, str) or not name.strip():
        raise invalid("'name' is a required field.", name_where)
    if len(name) > MAX_METRIC_NAME:
        raise invalid("Metric name must be less than 128 characters.", name_where)
    time = attributes.get("time")
    if time is not None:
        _check_time(time, now, f"{where}/time")
    value = attributes.get("value")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid("'value' must be a number.", f"{where}/value")
    currency = attributes.get("value_currency")
    if currency is not None and (
        not isinstance(currency, str) or not _CURRENCY.fullmatch(currency)
    ):
        raise invalid(
            "'value_currency' must be an ISO 4217 currency code.", f"{where}/value_currency"
        )
    unique_id = attributes.get("unique_id")
    if unique_id is not None and not isinstance(unique_id, str):
        raise invalid("'unique_id' must be a string.", f"{where}/unique_id")
    if isinstance(unique_id, str):
        _check_string(unique_id, f"{where}/unique_id")
    backfill = _optional_bool(attributes, "backfill", where)
    if backfill is None:
        backfill = group_backfill
    return EventIn(
        metric=name,
        profile=profile,
        identity=profile_identity(profile),
        unique_id=unique_id,
        time=time,
        properties=properties,
        value=None if value is None else float(value),
        value_currency=currency,
        backfill=bool(backfill),
        attributes=attributes,
    )


def _profile(resource: dict[str, Any], where: str) -> dict[str, Any]:
    attributes: dict[str, Any] = resource["attributes"]
    unknown = sorted(set(attributes) - _PROFILE_KEYS)
    if unknown:
        raise invalid(
            f"'{unknown[0]}' is not a valid field for the resource 'profile'.",
            f"{where}/{unknown[0]}",
        )
    for name in IDENTIFIERS:
        value = attributes.get(name)
        if value is not None and not isinstance(value, str):
            raise invalid(f"'{name}' must be a string.", f"{where}/{name}")
        if isinstance(value, str):
            _check_string(value, f"{where}/{name}")
    if not profile_identity(attributes):
        raise invalid(
            "A profile identifier (email, phone_number, external_id, _kx or "
            "anonymous_id) is required.",
            where,
        )
    email = attributes.get("email")
    if email and "@" not in email:
        raise invalid(f"Invalid email address: '{email}'.", f"{where}/email")
    phone = attributes.get("phone_number")
    if phone and not _valid_e164(phone):
        raise invalid("Invalid phone number format (expected E.164).", f"{where}/phone_number")
    _check_value(attributes, where, 1)
    return attributes


def _valid_e164(phone: str) -> bool:
    # Klaviyo takes a phone number only in E.164 form and only when it is a number some
    # country assigns ("+15555555555" has the shape but is refused): libphonenumber decides.
    if not _E164.fullmatch(phone):
        return False
    try:
        number = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number)


def _check_time(value: Any, now: datetime, where: str) -> None:
    if not isinstance(value, str):
        raise invalid("'time' must be an ISO 8601 datetime string.", where)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid(f"'{value}' is not a valid datetime.", where) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if parsed < MIN_TIME:
        raise invalid("Event time must be after the year 2000.", where)
    if parsed > now + timedelta(days=365):
        raise invalid("Event time can be at most 1 year in the future.", where)


def _check_value(value: Any, where: str, depth: int) -> None:
    if isinstance(value, str):
        _check_string(value, where)
    elif isinstance(value, dict):
        if depth > MAX_NESTING:
            raise invalid(f"Properties may be nested at most {MAX_NESTING} levels.", where)
        for key, item in value.items():
            _check_string(key, where)
            _check_value(item, f"{where}/{key}", depth + 1)
    elif isinstance(value, list):
        if depth > MAX_NESTING:
            raise invalid(f"Properties may be nested at most {MAX_NESTING} levels.", where)
        if len(value) > MAX_ARRAY_ITEMS:
            raise invalid(f"Arrays may have at most {MAX_ARRAY_ITEMS} items.", where)
        for i, item in enumerate(value):
            _check_value(item, f"{where}/{i}", depth + 1)


def _check_string(value: str, where: str) -> None:
    # Cheap test first: a str of n chars is at most 4n bytes in UTF-8.
    if len(value) * 4 > MAX_STRING_BYTES and len(value.encode()) > MAX_STRING_BYTES:
        raise invalid("Strings may be at most 100 KB.", where)


def _optional_bool(attributes: dict[str, Any], name: str, where: str) -> bool | None:
    value = attributes.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(f"'{name}' must be a boolean.", f"{where}/{name}")
    return value


def _resource(value: Any, kind: str, where: str) -> dict[str, Any]:
    container = _object(value, where)
    data = _object(container.get("data"), f"{where}/data")
    _type(data, kind, f"{where}/data")
    _object(data.get("attributes"), f"{where}/data/attributes")
    return data


def _type(resource: dict[str, Any], kind: str, where: str) -> None:
    if resource.get("type") != kind:
        raise invalid(f"Expected type '{kind}', got {resource.get('type')!r}.", f"{where}/type")


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        raise _missing(where)
    if not isinstance(value, dict):
        raise invalid("Expected an object.", where or "/")
    return value


def _missing(where: str) -> ApiError:
    return invalid(f"'{where.rsplit('/', 1)[-1]}' is a required field.", where or "/")
