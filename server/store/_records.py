"""The records the store keeps and hands out.

Plain frozen dataclasses: the store, the intake path and the delivery engine exchange these,
never ORM rows or protobuf messages, so each layer can change its wire format alone.
Times are POSIX seconds (float, UTC).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

DEFAULT_CLICK_METRIC = "Elido Link Clicked"
DEFAULT_CONVERSION_METRIC = "Elido Conversion"
DEFAULT_EMAIL_PARAMETERS: tuple[str, ...] = ("email", "utm_email", "elido_email")
DEFAULT_BACKFILL_AFTER_S = 24 * 3600.0


class IntegrationState(enum.StrEnum):
    """Whether an integration's events are being delivered."""

    ACTIVE = "active"
    KEY_REJECTED = "key_rejected"


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

    def to_profile_attributes(self) -> dict[str, str]:
        """The Klaviyo profile attributes (`email`, `phone_number`, `external_id`, `_kx`)."""
        attributes: dict[str, str] = {}
        if self.email:
            attributes["email"] = self.email
        if self.phone_number:
            attributes["phone_number"] = self.phone_number
        if self.external_id:
            attributes["external_id"] = self.external_id
        if self.kx:
            attributes["_kx"] = self.kx
        return attributes


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
    # The click as received (serialized ``elido.forwarder.v1.Click``). Its Klaviyo properties
    # are derived at delivery time, off the intake hot path, by a PayloadDecoder.
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


class PayloadDecoder(Protocol):
    """Turns a stored event payload into the Klaviyo event properties."""

    def __call__(
        self, kind: EventKind, payload: bytes, settings: IntegrationSettings
    ) -> Mapping[str, Any]:
        """The properties of an event of ``kind`` stored as ``payload``."""


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
    properties: Mapping[str, Any]
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
