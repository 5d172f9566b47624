"""Validation of clicks and conversions: every bad field named, nothing half-taken.

Limits are Klaviyo's stricter documented ones (<= 300 properties, <= 100 kB per string,
<= 4000 array items, <= 10 levels of nested objects, timestamps from 2000 to now + 1 year),
so an event we accept is one Klaviyo accepts.

Input policy (docs/architecture.md, "Input policy"):
- Unknown protobuf fields (from a newer client, or padding) are dropped, never stored: the
  stored click is re-serialized from the known fields only, so its size is bounded by the
  field limits below (:data:`MAX_STORED_CLICK_BYTES`).
- Control characters (U+0000-U+001F, U+007F) in URLs, link ids, UTM values, user agents,
  referrers and external ids are refused: no browser or HTTP request carries them raw.
- An email is validated and NFC-normalised by the same rule whether it arrives as a field or
  in a link parameter; internationalised addresses are valid in both.
- Phone numbers are validated with libphonenumber and stored in E.164 (see ``_phones``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from elido.forwarder.v1 import forwarder_pb2 as pb
from google.protobuf import json_format, timestamp_pb2

from elido_common.syntax import (
    EVENT_ID,
    KX_PATTERN,
    MAX_EXTERNAL_ID,
    UTM_KEY_PATTERN,
    WORKSPACE_ID,
    is_email,
    normalize_email,
)
from server._errors import Violation
from server.intake._identifiers import url_identifiers
from server.intake._phones import normalize_phone, phone_problem
from server.intake._plain import (
    CONTROL,
    MAX_AHEAD_S,
    MAX_LINK_ID,
    MAX_REFERRER,
    MAX_URL,
    MAX_USER_AGENT,
    MAX_UTM,
    MAX_UTM_VALUE,
    MIN_TIME,
    SettingsLookup,
    fits,
    plain_click,
)
from server.store._records import Identifiers, IntegrationSettings, NewClick, NewConversion

CURRENCY: Final = re.compile(r"[A-Z]{3}")
MAX_PROPERTIES: Final = 290  # Klaviyo's 300, less the properties the forwarder adds itself.
MAX_STRING_BYTES: Final = 100_000
MAX_ARRAY: Final = 4000
MAX_DEPTH: Final = 10  # levels of nested objects and arrays, `properties` itself the first
# What the stored (re-serialized) click can weigh at most with every field at its limit: the
# strings above, 4 UTF-8 bytes a character where the limit counts characters, and generous
# room for tags, lengths, the timestamp and the identifiers.
MAX_STORED_CLICK_BYTES: Final = (
    64 + 128 + 2 * MAX_URL + MAX_USER_AGENT + MAX_REFERRER + MAX_LINK_ID
    + MAX_UTM * (44 + 4 * MAX_UTM_VALUE + 8)
    + 254 * 4 + 16 + MAX_EXTERNAL_ID + 400 + 256
)  # fmt: skip

_DEFAULTS: Final = IntegrationSettings()


def check_workspace_id(value: str, field: str, out: list[Violation]) -> None:
    """Append a violation unless ``value`` is a well-formed workspace id."""
    if not value:
        out.append(Violation(field, "required"))
    elif WORKSPACE_ID.fullmatch(value) is None:
        out.append(Violation(field, "must be 1-64 characters of A-Z a-z 0-9 _ . -"))


def _check_event_id(value: str, field: str, out: list[Violation]) -> None:
    if not value:
        out.append(Violation(field, "required"))
    elif EVENT_ID.fullmatch(value) is None:
        out.append(Violation(field, "must be 1-128 characters of A-Z a-z 0-9 _ . : -"))


def _check_time(ts: timestamp_pb2.Timestamp, field: str, now: float, out: list[Violation]) -> float:
    if not 0 <= ts.nanos < 1_000_000_000:
        out.append(Violation(field, "nanos must be within [0, 1e9)"))
        return 0.0
    seconds = ts.seconds + ts.nanos / 1e9
    if seconds < MIN_TIME:
        out.append(Violation(field, "must be after 2000-01-01T00:00:00Z"))
    elif seconds > now + MAX_AHEAD_S:
        out.append(Violation(field, "must be no later than one year from now"))
    return seconds


def _check_url(value: str, field: str, out: list[Violation]) -> None:
    if not value:
        return
    if len(value) > MAX_URL:
        out.append(Violation(field, f"must be at most {MAX_URL} bytes"))
        return
    if CONTROL.search(value):
        out.append(Violation(field, "must not contain control characters (U+0000-U+001F, U+007F)"))
        return
    try:
        parts = urlsplit(value)
    except ValueError:
        out.append(Violation(field, "is not a valid URL"))
        return
    if parts.scheme not in ("http", "https") or not parts.netloc:
        out.append(Violation(field, "must be an absolute http(s) URL"))


def _check_text(value: str, field: str, limit: int, out: list[Violation]) -> None:
    if not fits(value, limit):
        out.append(Violation(field, f"must be at most {limit} bytes"))
    elif CONTROL.search(value):
        out.append(Violation(field, "must not contain control characters (U+0000-U+001F, U+007F)"))


def _identifiers(
    ids: pb.ProfileIdentifiers, field: str, region: str, out: list[Violation]
) -> Identifiers:
    """The identifiers, normalised (email NFC, phone E.164); violations appended to ``out``."""
    email = normalize_email(ids.email)
    if email and not is_email(email):
        out.append(Violation(f"{field}.email", "is not a valid email address"))
    phone = ""
    if ids.phone_number:
        phone = normalize_phone(ids.phone_number, region) or ""
        if not phone:
            out.append(Violation(f"{field}.phone_number", phone_problem(ids.phone_number, region)))
    if ids.external_id:
        _check_text(ids.external_id, f"{field}.external_id", MAX_EXTERNAL_ID, out)
    if ids.kx and KX_PATTERN.fullmatch(ids.kx) is None:
        out.append(
            Violation(f"{field}.kx", "is not a Klaviyo exchange id (<token>.<6 characters>)")
        )
    return Identifiers(email, phone, ids.external_id, ids.kx)


def validate_identifiers(
    ids: pb.ProfileIdentifiers, field: str, region: str, out: list[Violation]
) -> Identifiers:
    """Identifiers checked as a click's are (for admin RPCs naming a profile)."""
    return _identifiers(ids, field, region, out)


def _click_violations(
    click: pb.Click, field: str, now: float, region: str
) -> tuple[list[Violation], Identifiers]:
    out: list[Violation] = []
    check_workspace_id(click.workspace_id, f"{field}.workspace_id", out)
    _check_event_id(click.click_id, f"{field}.click_id", out)
    if not click.HasField("click_time"):
        out.append(Violation(f"{field}.click_time", "required"))
    else:
        _check_time(click.click_time, f"{field}.click_time", now, out)
    _check_text(click.link_id, f"{field}.link_id", MAX_LINK_ID, out)
    _check_url(click.short_url, f"{field}.short_url", out)
    _check_url(click.destination_url, f"{field}.destination_url", out)
    if len(click.utm_parameters) > MAX_UTM:
        out.append(Violation(f"{field}.utm_parameters", f"at most {MAX_UTM} parameters"))
    for key, value in click.utm_parameters.items():
        if UTM_KEY_PATTERN.fullmatch(key) is None:
            out.append(
                Violation(
                    f"{field}.utm_parameters[{key!r}]",
                    "key must be utm_ followed by 1-40 of a-z 0-9 _",
                )
            )
        elif len(value) > MAX_UTM_VALUE:
            out.append(
                Violation(
                    f"{field}.utm_parameters[{key!r}]",
                    f"value must be at most {MAX_UTM_VALUE} characters",
                )
            )
        elif CONTROL.search(value):
            out.append(
                Violation(
                    f"{field}.utm_parameters[{key!r}]",
                    "value must not contain control characters (U+0000-U+001F, U+007F)",
                )
            )
    identifiers = _identifiers(click.identifiers, f"{field}.identifiers", region, out)
    _check_text(click.user_agent, f"{field}.user_agent", MAX_USER_AGENT, out)
    _check_text(click.referrer, f"{field}.referrer", MAX_REFERRER, out)
    return out, identifiers


def validate_click(
    click: pb.Click, field: str, settings_for: SettingsLookup, now: float | None = None
) -> NewClick | list[Violation]:
    """The click ready to commit, or every violation found (field paths under ``field``)."""
    now = time.time() if now is None else now
    # Unknown fields are dropped, never stored (see the module docstring). The request is
    # ours to change: it is not read again after validation.
    click.DiscardUnknownFields()
    return plain_click(click, now, settings_for) or detailed_click(click, field, settings_for, now)


def detailed_click(
    click: pb.Click, field: str, settings_for: SettingsLookup, now: float
) -> NewClick | list[Violation]:
    """:func:`validate_click` field by field, for a click the fast path did not take.

    The caller has dropped the click's unknown fields.
    """
    settings = settings_for(click.workspace_id) or _DEFAULTS
    out, identifiers = _click_violations(click, field, now, settings.default_phone_region)
    if out:
        return out
    if click.destination_url:
        found = url_identifiers(click.destination_url, settings)
        if found is not None:
            identifiers = identifiers.merged_over(found)
    ts = click.click_time
    return NewClick(
        workspace_id=click.workspace_id,
        click_id=click.click_id,
        click_time=ts.seconds + ts.nanos / 1e9,
        identifiers=identifiers,
        payload=click.SerializeToString(),
    )


def _check_json(value: Any, field: str, depth: int, out: list[Violation]) -> None:
    # ``depth`` counts the objects and arrays ``value`` sits in plus itself when it is one:
    # Klaviyo's "10 levels of nested objects" bound containers, a leaf adds no level.
    if isinstance(value, list | Mapping) and depth > MAX_DEPTH:
        out.append(Violation(field, f"nested deeper than {MAX_DEPTH} levels of objects"))
    elif isinstance(value, str):
        if len(value.encode()) > MAX_STRING_BYTES:
            out.append(Violation(field, f"string longer than {MAX_STRING_BYTES} bytes"))
    elif isinstance(value, float) and not math.isfinite(value):
        out.append(Violation(field, "must be a finite number"))
    elif isinstance(value, list):
        if len(value) > MAX_ARRAY:
            out.append(Violation(field, f"more than {MAX_ARRAY} items"))
        for i, item in enumerate(value[:MAX_ARRAY]):
            _check_json(item, f"{field}[{i}]", depth + 1, out)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_json(item, f"{field}.{key}", depth + 1, out)


def validate_conversion(
    conversion: pb.Conversion,
    field: str,
    now: float | None = None,
    settings_for: SettingsLookup | None = None,
) -> NewConversion | list[Violation]:
    """The conversion ready to commit, or every violation found."""
    now = time.time() if now is None else now
    settings = (settings_for(conversion.workspace_id) if settings_for else None) or _DEFAULTS
    out: list[Violation] = []
    _check_event_id(conversion.conversion_id, f"{field}.conversion_id", out)
    check_workspace_id(conversion.workspace_id, f"{field}.workspace_id", out)
    if conversion.click_id:
        _check_event_id(conversion.click_id, f"{field}.click_id", out)
    conversion_time = now
    if conversion.HasField("conversion_time"):
        conversion_time = _check_time(
            conversion.conversion_time, f"{field}.conversion_time", now, out
        )
    value: float | None = None
    if not math.isfinite(conversion.value) or conversion.value < 0:
        out.append(Violation(f"{field}.value", "must be a finite, non-negative number"))
    elif conversion.value or conversion.currency:
        value = conversion.value
    if conversion.currency and CURRENCY.fullmatch(conversion.currency) is None:
        out.append(Violation(f"{field}.currency", "must be an ISO 4217 code such as USD"))
    elif conversion.value and not conversion.currency:
        out.append(Violation(f"{field}.currency", "required when value is nonzero"))
    properties: dict[str, Any] = json_format.MessageToDict(conversion.properties)
    if len(properties) > MAX_PROPERTIES:
        out.append(Violation(f"{field}.properties", f"at most {MAX_PROPERTIES} properties"))
    else:
        _check_json(properties, f"{field}.properties", 1, out)
    identifiers = _identifiers(
        conversion.identifiers, f"{field}.identifiers", settings.default_phone_region, out
    )
    if not conversion.click_id and not identifiers.any() and not out:
        out.append(Violation(f"{field}.click_id", "required unless identifiers are given"))
    if out:
        return out
    properties.setdefault("conversion_id", conversion.conversion_id)
    if conversion.click_id:
        properties.setdefault("click_id", conversion.click_id)
    return NewConversion(
        workspace_id=conversion.workspace_id,
        conversion_id=conversion.conversion_id,
        click_id=conversion.click_id,
        conversion_time=conversion_time,
        value=value,
        currency=conversion.currency,
        identifiers=identifiers,
        properties=properties,
    )
