"""Validation of the admin RPCs' requests (integrations, paging, replay)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from elido.forwarder.v1 import forwarder_pb2 as pb

from server._errors import Violation, invalid_argument
from server._secret import is_valid_private_key
from server.intake._phones import REGIONS
from server.intake._validation import check_workspace_id, validate_identifiers
from server.store._records import DEFAULT_EMAIL_PARAMETERS, Identifiers, IntegrationSettings

PARAMETER_NAME: Final = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,64}")
MAX_EMAIL_PARAMETERS: Final = 16
DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000


def require_workspace_id(workspace_id: str, field: str = "workspace_id") -> None:
    """Raise INVALID_ARGUMENT unless the workspace id is well formed."""
    out: list[Violation] = []
    check_workspace_id(workspace_id, field, out)
    if out:
        raise invalid_argument(out)


def _metric_name(value: str, field: str, default: str, out: list[Violation]) -> str:
    if not value:
        return default
    if len(value) >= 128 or not value.strip() or not value.isprintable():
        out.append(Violation(field, "must be 1-127 printable characters"))
    return value


def validate_register(request: pb.RegisterIntegrationRequest) -> IntegrationSettings:
    """The effective settings of a valid request; raises INVALID_ARGUMENT otherwise."""
    out: list[Violation] = []
    check_workspace_id(request.workspace_id, "workspace_id", out)
    if not request.private_key:
        out.append(Violation("private_key", "required"))
    elif not is_valid_private_key(request.private_key):
        # Never echo the value: a near-miss is still most of a secret.
        out.append(
            Violation(
                "private_key",
                "must be a Klaviyo private API key: pk_ followed by letters and digits",
            )
        )
    s = request.settings
    defaults = IntegrationSettings()
    click_metric = _metric_name(
        s.click_metric_name, "settings.click_metric_name", defaults.click_metric_name, out
    )
    conversion_metric = _metric_name(
        s.conversion_metric_name,
        "settings.conversion_metric_name",
        defaults.conversion_metric_name,
        out,
    )
    if len(s.email_parameters) > MAX_EMAIL_PARAMETERS:
        out.append(Violation("settings.email_parameters", f"at most {MAX_EMAIL_PARAMETERS} names"))
    for i, name in enumerate(s.email_parameters):
        if PARAMETER_NAME.fullmatch(name) is None:
            out.append(
                Violation(
                    f"settings.email_parameters[{i}]",
                    "must be 1-64 characters of A-Z a-z 0-9 _ . - [ ]",
                )
            )
    backfill_s = defaults.backfill_after_s
    if s.HasField("backfill_after"):
        d = s.backfill_after
        if d.seconds < 0 or d.nanos < 0:
            out.append(Violation("settings.backfill_after", "must not be negative"))
        elif d.seconds or d.nanos:
            backfill_s = d.seconds + d.nanos / 1e9
    region = s.default_phone_region.upper()
    if region and region not in REGIONS:
        out.append(
            Violation(
                "settings.default_phone_region",
                "must be an ISO 3166-1 alpha-2 region with a phone numbering plan, e.g. US",
            )
        )
    if out:
        raise invalid_argument(out)
    return IntegrationSettings(
        click_metric_name=click_metric,
        conversion_metric_name=conversion_metric,
        email_parameters=tuple(s.email_parameters) or DEFAULT_EMAIL_PARAMETERS,
        backfill_after_s=backfill_s,
        default_phone_region=region,
    )


def page_size(value: int, field: str = "page_size") -> int:
    """The effective page size; raises INVALID_ARGUMENT when out of range."""
    if value == 0:
        return DEFAULT_PAGE_SIZE
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise invalid_argument([Violation(field, f"must be between 1 and {MAX_PAGE_SIZE}")])
    return value


def encode_page_token(cursor: str) -> str:
    """An opaque token for the next page."""
    return base64.urlsafe_b64encode(cursor.encode()).decode()


def decode_page_token(token: str, field: str = "page_token") -> str:
    """The cursor inside a page token; raises INVALID_ARGUMENT when it is not ours."""
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_argument(
            [Violation(field, "is not a token from a previous response")]
        ) from None


def event_ids(values: list[str], all_: bool) -> list[int] | None:
    """Parsed event ids for a replay (None = all); raises INVALID_ARGUMENT."""
    if all_ and values:
        raise invalid_argument([Violation("event_ids", "must be empty when all is set")])
    if not all_ and not values:
        raise invalid_argument([Violation("event_ids", "name at least one event, or set all")])
    if all_:
        return None
    parsed: list[int] = []
    bad: list[Violation] = []
    for i, value in enumerate(values):
        if value.isdigit() and len(value) < 19:
            parsed.append(int(value))
        else:
            bad.append(Violation(f"event_ids[{i}]", "is not an event id"))
    if bad:
        raise invalid_argument(bad)
    return parsed


def test_event_profile(request: pb.VerifyIntegrationKeyRequest, region: str) -> Identifiers | None:
    """The profile a key check's test event goes to (None: no test event asked for).

    Validated like a click's identifiers (phone numbers without ``+`` in the integration's
    ``region``); ``kx`` is refused: the owner must be able to look the profile up. Violations
    never quote the value. Raises INVALID_ARGUMENT.
    """
    if not request.HasField("test_event_profile"):
        return None
    field = "test_event_profile"
    ids = request.test_event_profile
    out: list[Violation] = []
    named = pb.ProfileIdentifiers(
        email=ids.email, phone_number=ids.phone_number, external_id=ids.external_id
    )
    identifiers = validate_identifiers(named, field, region, out)
    if ids.kx:
        out.append(
            Violation(
                f"{field}.kx",
                "not taken for a test event: name the profile by email, phone number or "
                "external id",
            )
        )
    if not (ids.email or ids.phone_number or ids.external_id):
        out.append(Violation(field, "name the profile by email, phone number or external id"))
    if out:
        raise invalid_argument(out)
    return identifiers
