"""Outbox events for tests."""

from __future__ import annotations

import itertools
from typing import Any

from server.store._records import EventKind, Identifiers, OutboxEvent

# 2026-11-27T10:00:00Z; events in tests happen around then.
T0 = 1_795_773_600.0
_ids = itertools.count(1)


def click(
    source_id: str = "clk_1",
    *,
    email: str = "ada@example.com",
    kx: str = "",
    phone: str = "",
    external_id: str = "",
    occurred_at: float = T0,
    properties: dict[str, Any] | None = None,
    workspace: str = "ws_1",
) -> OutboxEvent:
    """A click event."""
    return OutboxEvent(
        event_id=next(_ids),
        workspace_id=workspace,
        kind=EventKind.CLICK,
        source_id=source_id,
        occurred_at=occurred_at,
        created_at=occurred_at,
        identifiers=Identifiers(email=email, phone_number=phone, external_id=external_id, kx=kx),
        properties=properties
        if properties is not None
        else {"url": "https://shop.example/p/1", "utm_source": "klaviyo"},
        value=None,
        currency="",
        attempts=0,
    )


def conversion(
    source_id: str = "conv_1",
    *,
    email: str = "ada@example.com",
    value: float | None = 19.99,
    currency: str = "EUR",
    occurred_at: float = T0,
) -> OutboxEvent:
    """A conversion event."""
    return OutboxEvent(
        event_id=next(_ids),
        workspace_id="ws_1",
        kind=EventKind.CONVERSION,
        source_id=source_id,
        occurred_at=occurred_at,
        created_at=occurred_at,
        identifiers=Identifiers(email=email),
        properties={"click_id": "clk_1"},
        value=value,
        currency=currency,
        attempts=0,
    )
