"""Validation of the admin RPCs' requests (integrations, paging, replay, erasure)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Final

from elido.forwarder.v1 import forwarder_pb2 as pb
from google.protobuf import timestamp_pb2

from elido_common.syntax import KX_PATTERN, MAX_EXTERNAL_ID, is_email, normalize_email
from server._errors import Violation, invalid_argument
from server._secret import is_valid_private_key
from server.intake._phones import REGIONS, normalize_phone
from server.intake._validation import check_workspace_id, validate_identifiers
from server.store._records import (
    DEFAULT_EMAIL_PARAMETERS,
    ErasureTargets,
    EventKind,
    FailedSelection,
    Identifiers,
    IntegrationSettings,
)

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


_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
MAX_REPLAY_IDS: Final = 1000
MAX_ERROR_FILTER: Final = 256
MAX_ERASURE_IDENTIFIERS: Final = 100
_KINDS: Final = {
    pb.EVENT_KIND_CLICK: EventKind.CLICK,
    pb.EVENT_KIND_CONVERSION: EventKind.CONVERSION,
}


def event_ids(values: list[str], all_: bool) -> list[int] | None:
    """Parsed event ids for a replay (None = all); raises INVALID_ARGUMENT."""
    if all_ and values:
        raise invalid_argument([Violation("event_ids", "must be empty when all is set")])
    if not all_ and not values:
        raise invalid_argument([Violation("event_ids", "name at least one event, or set all")])
    if all_:
        return None
    bad: list[Violation] = []
    parsed = _parse_event_ids(values, bad)
    if bad:
        raise invalid_argument(bad)
    return parsed


def _parse_event_ids(values: list[str], out: list[Violation]) -> list[int]:
    if len(values) > MAX_REPLAY_IDS:
        out.append(Violation("event_ids", f"at most {MAX_REPLAY_IDS} ids per request"))
        return []
    parsed: list[int] = []
    for i, value in enumerate(values):
        if value.isdigit() and len(value) < 19:
            parsed.append(int(value))
        else:
            out.append(Violation(f"event_ids[{i}]", "is not an event id"))
    return parsed


def _time(ts: timestamp_pb2.Timestamp, field: str, out: list[Violation]) -> float:
    if ts.seconds < 0 or not 0 <= ts.nanos < 1_000_000_000 or ts.seconds > 253402300799:
        out.append(Violation(field, "must be a valid time between 1970 and 9999"))
        return 0.0
    return ts.seconds + ts.nanos / 1e9


def replay_selection(
    request: pb.ReplayFailedEventsRequest,
) -> tuple[list[int] | None, FailedSelection]:
    """The event ids (None = any) and the selection of a replay; raises INVALID_ARGUMENT.

    Ids and filters combine (every one must hold); ``all`` stands alone; a request that
    names nothing at all is refused, so an empty request never replays a whole workspace.
    """
    out: list[Violation] = []
    check_workspace_id(request.workspace_id, "workspace_id", out)
    after = before = None
    if request.HasField("failed_after"):
        after = _time(request.failed_after, "failed_after", out)
    if request.HasField("failed_before"):
        before = _time(request.failed_before, "failed_before", out)
    if after is not None and before is not None and before <= after and not out:
        out.append(Violation("failed_before", "must be later than failed_after"))
    error = request.error_contains
    if error and (len(error) > MAX_ERROR_FILTER or not error.isprintable() or not error.strip()):
        out.append(
            Violation("error_contains", f"must be 1-{MAX_ERROR_FILTER} printable characters")
        )
    kind: EventKind | None = None
    if request.kind != pb.EVENT_KIND_UNSPECIFIED:
        if request.kind not in _KINDS:
            out.append(Violation("kind", "must be EVENT_KIND_CLICK or EVENT_KIND_CONVERSION"))
        else:
            kind = _KINDS[request.kind]
    filtered = after is not None or before is not None or bool(error) or kind is not None
    ids: list[int] | None = None
    if request.all:
        if request.event_ids:
            out.append(Violation("event_ids", "must be empty when all is set"))
        if filtered:
            out.append(Violation("all", "cannot be combined with filters; use the filters alone"))
    elif request.event_ids:
        ids = _parse_event_ids(list(request.event_ids), out)
    elif not filtered:
        out.append(
            Violation(
                "event_ids",
                "name at least one event, set a filter (failed_after, failed_before, "
                "error_contains, kind), or set all",
            )
        )
    if out:
        raise invalid_argument(out)
    selection = FailedSelection(
        failed_after=after, failed_before=before, error_contains=error, kind=kind
    )
    return ids, selection


def erasure_targets(request: pb.ErasePersonalDataRequest) -> tuple[str | None, ErasureTargets]:
    """The workspace (None = every one) and the normalised identifiers of an erasure.

    Violations name the field and its index, never the value: an identifier is personal data.
    """
    out: list[Violation] = []
    workspace: str | None = None
    if request.all_workspaces:
        if request.workspace_id:
            out.append(Violation("workspace_id", "must be empty when all_workspaces is set"))
    elif not request.workspace_id:
        out.append(Violation("workspace_id", "required (or set all_workspaces)"))
    else:
        check_workspace_id(request.workspace_id, "workspace_id", out)
        workspace = request.workspace_id
    total = (
        len(request.emails)
        + len(request.phone_numbers)
        + len(request.external_ids)
        + len(request.kxs)
    )
    if total == 0:
        out.append(Violation("emails", "name at least one identifier (emails, phone_numbers, "
                             "external_ids or kxs)"))  # fmt: skip
    elif total > MAX_ERASURE_IDENTIFIERS:
        out.append(Violation("emails", f"at most {MAX_ERASURE_IDENTIFIERS} identifiers in all"))
    emails: list[str] = []
    for i, value in enumerate(request.emails):
        email = normalize_email(value.strip())
        if not is_email(email):
            out.append(Violation(f"emails[{i}]", "is not a valid email address"))
        emails.append(email)
    phones: list[str] = []
    for i, value in enumerate(request.phone_numbers):
        phone = normalize_phone(value, "")
        if phone is None:
            out.append(
                Violation(
                    f"phone_numbers[{i}]",
                    "is not a valid phone number in international form (+ and country code)",
                )
            )
        else:
            phones.append(phone)
    for i, value in enumerate(request.external_ids):
        # The rule intake applies (so anything intake stored can be erased).
        if not value or len(value.encode()) > MAX_EXTERNAL_ID or _CONTROL.search(value):
            out.append(
                Violation(
                    f"external_ids[{i}]",
                    f"must be 1-{MAX_EXTERNAL_ID} bytes without control characters",
                )
            )
    for i, value in enumerate(request.kxs):
        if KX_PATTERN.fullmatch(value) is None:
            out.append(
                Violation(f"kxs[{i}]", "is not a Klaviyo exchange id (<token>.<6 characters>)")
            )
    if out:
        raise invalid_argument(out)
    return workspace, ErasureTargets(
        emails=tuple(dict.fromkeys(emails)),
        phone_numbers=tuple(dict.fromkeys(phones)),
        external_ids=tuple(dict.fromkeys(request.external_ids)),
        kxs=tuple(dict.fromkeys(request.kxs)),
    )


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A valid ListAuditEvents request, decoded."""

    workspace_id: str | None
    since: float | None
    until: float | None
    page_size: int
    before_id: int | None

    def token(self, before_id: int) -> str:
        """The page token continuing this query below ``before_id``."""
        return encode_page_token(f"{before_id}:{self._filters()}")

    def _filters(self) -> str:
        text = f"{self.workspace_id}|{self.since}|{self.until}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def audit_query(request: pb.ListAuditEventsRequest) -> AuditQuery:
    """The decoded query; raises INVALID_ARGUMENT (a page token must come from a previous
    response with the same filters, AIP-158)."""
    out: list[Violation] = []
    workspace: str | None = None
    if request.workspace_id:
        check_workspace_id(request.workspace_id, "workspace_id", out)
        workspace = request.workspace_id
    since = until = None
    if request.HasField("start_time"):
        since = _time(request.start_time, "start_time", out)
    if request.HasField("end_time"):
        until = _time(request.end_time, "end_time", out)
    if since is not None and until is not None and until <= since and not out:
        out.append(Violation("end_time", "must be later than start_time"))
    size = DEFAULT_PAGE_SIZE
    if request.page_size and not 1 <= request.page_size <= MAX_PAGE_SIZE:
        out.append(Violation("page_size", f"must be between 1 and {MAX_PAGE_SIZE}"))
    elif request.page_size:
        size = request.page_size
    if out:
        raise invalid_argument(out)
    query = AuditQuery(workspace, since, until, size, None)
    if not request.page_token:
        return query
    cursor = decode_page_token(request.page_token)
    before, _, filters = cursor.partition(":")
    if not before.isdigit() or len(before) > 18 or filters != query._filters():
        raise invalid_argument(
            [
                Violation(
                    "page_token",
                    "is not a token from a previous response with the same filters",
                )
            ]
        )
    return AuditQuery(workspace, since, until, size, int(before))


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
