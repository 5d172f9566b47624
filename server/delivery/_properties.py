"""Klaviyo event properties from stored outbox payloads, derived at delivery time.

A click is stored as the serialized ``Click`` it arrived as (unknown fields dropped): intake
(thousands a second) only validates and commits, and the work of turning a click into
properties — parsing the destination URL's UTM parameters, choosing fields — happens when
the event is delivered, at the rate Klaviyo takes events. A conversion's payload is its
properties as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from elido.forwarder.v1 import forwarder_pb2 as pb

from elido_common.syntax import MAX_UTM_VALUE, UTM_KEY_PATTERN
from server.store._records import EventKind, IntegrationSettings, OutboxEvent


def _utm_from_url(url: str, email_parameters: tuple[str, ...]) -> dict[str, str]:
    if "?" not in url:
        return {}
    utm: dict[str, str] = {}
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=False):
        # A parameter that carries the recipient's address is never copied into properties.
        if key in email_parameters:
            continue
        if UTM_KEY_PATTERN.fullmatch(key) and len(value) <= MAX_UTM_VALUE:
            utm.setdefault(key, value)
    return utm


def click_properties(click: pb.Click, settings: IntegrationSettings) -> dict[str, Any]:
    """The properties of a click event: ids, URLs, browser facts and every UTM parameter."""
    properties: dict[str, Any] = {"click_id": click.click_id}
    for name, value in (
        ("link_id", click.link_id),
        ("short_url", click.short_url),
        ("destination_url", click.destination_url),
        ("user_agent", click.user_agent),
        ("referrer", click.referrer),
    ):
        if value:
            properties[name] = value
    utm: dict[str, str] = {}
    if click.destination_url:
        utm = _utm_from_url(click.destination_url, settings.email_parameters)
    utm.update(click.utm_parameters)
    properties.update(sorted(utm.items()))
    return properties


def event_properties(event: OutboxEvent, settings: IntegrationSettings) -> Mapping[str, Any]:
    """The Klaviyo properties of an outbox event."""
    if event.kind is EventKind.CLICK:
        return click_properties(pb.Click.FromString(event.payload), settings)
    decoded: Mapping[str, Any] = json.loads(event.payload)
    return decoded
