"""Stored forms shared by every backend: integration settings and conversion properties."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from server.store._records import IntegrationSettings

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_SETTINGS_FIELDS = frozenset(f.name for f in dataclasses.fields(IntegrationSettings))


def settings_to_json(settings: IntegrationSettings) -> str:
    """The stored form of an integration's settings (JSON text)."""
    data = dataclasses.asdict(settings)
    data["email_parameters"] = list(settings.email_parameters)
    return _dumps(data)


def settings_from_json(text: str) -> IntegrationSettings:
    """Settings from their stored form; names a newer version added are ignored."""
    data = json.loads(text)
    data["email_parameters"] = tuple(data.get("email_parameters", ()))
    return IntegrationSettings(**{k: v for k, v in data.items() if k in _SETTINGS_FIELDS})


def properties_to_json(properties: Mapping[str, Any]) -> bytes:
    """A conversion's properties as stored in the outbox payload."""
    return _dumps(dict(properties)).encode()
