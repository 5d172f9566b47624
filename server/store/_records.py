"""The records the store keeps and hands out.

Plain frozen dataclasses: the store, the intake path and the delivery engine exchange these,
never ORM rows or protobuf messages, so each layer can change its wire format alone.
Times are POSIX seconds (float, UTC).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CLICK_METRIC = "Elido Link Clicked"
DEFAULT_CONVERSION_METRIC = "Elido Conversion"
DEFAULT_EMAIL_PARAMETERS: tuple[str, ...] = ("email", "utm_email", "elido_email")
DEFAULT_BACKFILL_AFTER_S = 24 * 3600.0


class IntegrationState(enum.StrEnum):
    """Whether an integration's events are being delivered."""

    ACTIVE = "active"
    KEY_REJECTED = "key_rejected"
    # Klaviyo could not confirm the key at registration (unreachable, 5xx, an unexpected
    # answer). Its events are delivered; the first answer about the key settles the state.
    UNVERIFIED = "unverified"

    @property
    def delivers(self) -> bool:
        """True if events of an integration in this state are sent to Klaviyo."""
        return self is not IntegrationState.KEY_REJECTED


class EventKind(enum.StrEnum):
    """What an outbox event records."""

    CLICK = "click"
    CONVERSION = "conversion"


class ClickOutcome(enum.StrEnum):
    """What the store did with a click (mirrors the API's ClickDisposition)."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    ANONYMOUS = "anonymous"
    NO_INTEGRATION = "no_integration"


class ConversionOutcome(enum.StrEnum):
    """What the store did with a conversion (mirrors the API's ConversionDisposition)."""

    QUEUED = "queued"
    DUPLICATE = "duplicate"
    UNATTRIBUTED = "unattributed"
    NO_INTEGRATION = "no_integration"


@dataclass(frozen=True, slots=True)
class Identifiers:
    """Klaviyo profile identifiers; empty strings mean absent."""

    email: str = ""
    phone_number: str = ""
    external_id: str = ""
    kx: str = ""

    def any(self) -> bool:
        """True if at least one identifier is present (the event is forwardable)."""
        return bool(self.email or self.phone_number or self.external_id or self.kx)

    def merged_over(self, fallback: Identifiers) -> Identifiers:
        """These identifiers, with gaps filled from ``fallback``."""
        return Identifiers(
            email=self.email or fallback.email,
            phone_number=self.phone_number or fallback.phone_number,
            external_id=self.external_id or fallback.external_id,
            kx=self.kx or fallback.kx,
        )


@dataclass(frozen=True, slots=True)
class IntegrationSettings:
    """An integration's effective settings (defaults filled in)."""

    click_metric_name: str = DEFAULT_CLICK_METRIC
    conversion_metric_name: str = DEFAULT_CONVERSION_METRIC
    email_parameters: tuple[str, ...] = DEFAULT_EMAIL_PARAMETERS
    backfill_after_s: float = DEFAULT_BACKFILL_AFTER_S
    # ISO 3166-1 region of phone numbers written without "+"; "" refuses such numbers.
    default_phone_region: str = ""

    def metric_name(self, kind: EventKind) -> str:
        """The Klaviyo metric name for events of ``kind``."""
        return self.click_metric_name if kind is EventKind.CLICK else self.conversion_metric_name


@dataclass(frozen=True, slots=True)
class IntegrationRecord:
    """A stored integration. ``ciphertext`` is Vault transit ciphertext, never the key."""

    workspace_id: str
    ciphertext: str
    key_fingerprint: str
    key_version: int
    settings: IntegrationSettings
    state: IntegrationState
    state_reason: str
    created_at: float
    updated_at: float
    # The Klaviyo account the key speaks for (``PrivateKey.account``): workspaces with the
    # same account share one delivery lease and one rate limiter. Empty until known.
    account: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryCounters:
    """An integration's delivery counters and last outcome."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    anonymous_clicks: int = 0
    last_delivery_at: float | None = None
    last_error: str = ""
    last_error_at: float | None = None


# Not frozen: one is built per click on the intake hot path, and a frozen dataclass's
# __init__ costs several times more. Nothing mutates it after validation.
@dataclass(slots=True)
class NewClick:
    """A validated click, identifiers resolved, ready to be committed."""

    workspace_id: str
    click_id: str
    click_time: float
    identifiers: Identifiers
    # The click as received (serialized ``elido.forwarder.v1.Click``, unknown fields dropped).
    # Its Klaviyo properties are derived at delivery time, off the intake hot path.
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class NewConversion:
    """A validated conversion, ready to be committed."""

    workspace_id: str
    conversion_id: str
    click_id: str
    conversion_time: float
    value: float | None
    currency: str
    # Identifiers the caller passed; the click's recorded identifiers take precedence.
    identifiers: Identifiers
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event waiting for delivery, as the delivery engine reads it."""

    event_id: int
    workspace_id: str
    kind: EventKind
    # The click id or conversion id: Klaviyo's ``unique_id``.
    source_id: str
    occurred_at: float
    created_at: float
    identifiers: Identifiers
    # As intake stored it: a click's serialized ``Click`` (unknown fields dropped), a
    # conversion's properties as JSON. Delivery turns it into Klaviyo properties.
    payload: bytes
    value: float | None
    currency: str
    attempts: int


@dataclass(frozen=True, slots=True)
class FailedEventRecord:
    """An event that failed for good (until replayed)."""

    event_id: int
    workspace_id: str
    kind: EventKind
    source_id: str
    attempts: int
    last_error: str
    created_at: float
    failed_at: float


@dataclass(frozen=True, slots=True)
class LeaseHandover:
    """What the previous holder of a lease left for the next: a usage record, and its age.

    The store keeps ``usage`` opaque (the delivery engine records the Klaviyo requests of
    the last minute in it, so the next holder's rate limiter starts where the previous
    one's stopped). Times are on the database's clock, relative to the acquisition.
    """

    usage: str
    # The previous holder's fencing token: a holder that finds its own token here knows that
    # the usage is its own (and already counted).
    token: int
    # How long before the acquisition the usage was recorded.
    usage_age_s: float
    # How long after the acquisition the previous holder's lease would have run (<= 0 when
    # it had lapsed or was released): until then it may still have been sending.
    valid_for_s: float


@dataclass(frozen=True, slots=True)
class Lease:
    """A held delivery lease: who holds which name, until when (on the database's clock).

    ``token`` grows by one every time the lease changes hands; every delivery write names the
    lease it was made under, and the store refuses it unless that lease is still held
    (fencing): a replica that was paused past its lease can no longer mark events.
    """

    name: str
    owner: str
    token: int
    expires_at: float
    # How long the lease was granted for, in seconds (the holder renews well before).
    ttl_s: float
    # Set on acquisition when the lease had a holder before.
    handover: LeaseHandover | None = None


@dataclass(frozen=True, slots=True)
class DueWorkspace:
    """A workspace with events due for delivery, and the account its key speaks for."""

    workspace_id: str
    account: str


@dataclass(frozen=True, slots=True)
class ErasureTargets:
    """The identifiers of one person whose data is erased, normalised as intake stores them.

    Emails are matched ignoring the case of ASCII letters (intake keeps an address as sent,
    so ``Ada@Example.com`` and ``ada@example.com`` were both stored); the others exactly.
    """

    emails: tuple[str, ...] = ()
    phone_numbers: tuple[str, ...] = ()
    external_ids: tuple[str, ...] = ()
    kxs: tuple[str, ...] = ()

    def any(self) -> bool:
        """True if there is at least one identifier to erase."""
        return bool(self.emails or self.phone_numbers or self.external_ids or self.kxs)


@dataclass(frozen=True, slots=True)
class ErasureCounts:
    """What an erasure deleted."""

    # Click-index entries (the click id -> identifiers records used for attribution).
    clicks: int = 0
    # Outbox events waiting for delivery (queued, or held while the key is rejected).
    queued_events: int = 0
    # Failed events (replayable until erased).
    failed_events: int = 0


@dataclass(frozen=True, slots=True)
class FailedSelection:
    """Which failed events of a workspace a replay takes; every set criterion must hold."""

    # Only these event ids; None means any.
    event_ids: tuple[int, ...] | None = None
    # Failed at or after this time (POSIX seconds); None means no lower bound.
    failed_after: float | None = None
    # Failed before this time; None means no upper bound.
    failed_before: float | None = None
    # The last error contains this text, ignoring ASCII case; "" means any.
    error_contains: str = ""
    # Only events of this kind; None means both.
    kind: EventKind | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One admin action, as the audit trail keeps it. Never holds a key or an identifier."""

    occurred_at: float
    # register, remove, rewrap, replay, erase, key_recheck.
    action: str
    # "" when the action spans every workspace.
    workspace_id: str
    # The caller's token name ("" when none), its roles (comma-separated), and the mTLS
    # client certificate's identity ("" without mTLS).
    actor: str
    roles: str
    client_identity: str
    # What changed, as JSON text.
    details: str
    # "OK", or the stable reason of the error the caller got.
    outcome: str


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A stored audit entry and its id (ids grow with time)."""

    audit_id: int
    entry: AuditEntry
