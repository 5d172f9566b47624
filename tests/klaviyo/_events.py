"""Outbox events for tests."""

from __future__ import annotations

import itertools
import json

from elido.forwarder.v1 import forwarder_pb2 as pb

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
    url: str = "https://shop.example/p/1?utm_source=klaviyo",
    link_id: str = "",
    user_agent: str = "",
    workspace: str = "ws_1",
) -> OutboxEvent:
    """A click event, stored as intake stores it (the serialized Click)."""
    stored = pb.Click(
        click_id=source_id, destination_url=url, link_id=link_id, user_agent=user_agent
    )
    return OutboxEvent(
        event_id=next(_ids),
        workspace_id=workspace,
        kind=EventKind.CLICK,
        source_id=source_id,
        occurred_at=occurred_at,
        created_at=occurred_at,
        identifiers=Identifiers(email=email, phone_number=phone, external_id=external_id, kx=kx),
        payload=stored.SerializeToString(),
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
        payload=json.dumps({"click_id": "clk_1"}).encode(),
        value=value,
        currency=currency,
        attempts=0,
    )
