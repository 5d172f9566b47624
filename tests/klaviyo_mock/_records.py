"""What the mock remembers: every request, and the events it recorded on timelines."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


# Not frozen: the answer's status is filled in once the mock has decided it.
@dataclass(slots=True)
class RecordedRequest:
    """One request as received (headers and raw body), and what the mock answered."""

    seq: int
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    account: str | None
    received_at: float  # time.time()
    status: int = 0  # 0 = no answer (connection dropped or hung)

    @property
    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """A header, looked up case-insensitively."""
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return None


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event the mock accepted, as Klaviyo would put it on a profile timeline."""

    account: str
    endpoint: str  # "events" or "bulk"
    metric: str
    profile: Mapping[str, Any]  # the profile attributes sent
    profile_identity: str  # what the mock dedupes on, e.g. "email:a@b.c"
    unique_id: str | None
    time: str | None
    properties: Mapping[str, Any]
    value: float | None = None
    value_currency: str | None = None
    backfill: bool = False
    request_seq: int = 0
    received_at: float = 0.0
    attributes: Mapping[str, Any] = field(default_factory=dict)  # the event attributes as sent

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the admin API's timeline format)."""
        return {
            "account": self.account,
            "endpoint": self.endpoint,
            "metric": self.metric,
            "profile": dict(self.profile),
            "profile_identity": self.profile_identity,
            "unique_id": self.unique_id,
            "time": self.time,
            "properties": dict(self.properties),
            "value": self.value,
            "value_currency": self.value_currency,
            "backfill": self.backfill,
            "request_seq": self.request_seq,
            "received_at": self.received_at,
        }
