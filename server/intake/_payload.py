"""Klaviyo event properties from stored event payloads, derived at delivery time.

A click is stored as the serialized ``Click`` it arrived as: intake (thousands a second) only
validates and commits, and the work of turning a click into properties — parsing the
destination URL's UTM parameters, choosing fields — happens when the event is delivered, at
the rate Klaviyo takes events.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from elido.forwarder.v1 import forwarder_pb2 as pb

from server.intake._identifiers import facts_from_url
from server.store._records import EventKind, IntegrationSettings


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
        utm = facts_from_url(click.destination_url, settings.email_parameters).utm
    utm.update(click.utm_parameters)
    properties.update(sorted(utm.items()))
    return properties


def decode_payload(
    kind: EventKind, payload: bytes, settings: IntegrationSettings
) -> Mapping[str, Any]:
    """A :class:`server.store._records.PayloadDecoder` for what intake stores."""
    if kind is EventKind.CLICK:
        return click_properties(pb.Click.FromString(payload), settings)
    decoded: Mapping[str, Any] = json.loads(payload)
    return decoded
