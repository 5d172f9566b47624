"""Klaviyo request bodies built from outbox events.

``build_event`` makes a Create Event body (schema ``EventCreateQueryV2``), ``build_bulk_job`` a
Bulk Create Events body (``EventsBulkCreateJob``) with events grouped under their profile, and
``plan_bulk_jobs`` splits a backlog into jobs Klaviyo will accept: at most ``max_events`` events
and ``max_bytes`` serialized, and never two events with the same profile, metric and
``unique_id`` in one job (Klaviyo fails the whole job for that; in separate jobs the first
processed wins, which is exactly the dedupe we want).

Rules shared by both bodies:
- ``unique_id`` is the click id or conversion id, so re-sends cannot duplicate an entry.
- ``time`` is when the click (or conversion) happened, ISO-8601 UTC truncated to the second
  (Klaviyo truncates anyway; sending it truncated makes the body deterministic).
- ``value``/``value_currency`` only for events that carry a value.
- ``backfill: true`` when the event is older than the integration's ``backfill_after_s``, so
  stale clicks are recorded without firing flows; otherwise the field is left out.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from server.delivery._properties import event_properties
from server.store._records import Identifiers, IntegrationSettings, OutboxEvent

MAX_BULK_EVENTS: Final = 1000
MAX_BULK_BYTES: Final = 5_000_000

# The job envelope around the groups, generously rounded up: {"data":{"type":
# "event-bulk-create-job","attributes":{"events-bulk-create":{"data":[...]}}}}.
_JOB_ENVELOPE_BYTES: Final = 128


def format_time(occurred_at: float) -> str:
    """POSIX seconds as ISO-8601 UTC truncated to the second: ``2026-11-27T10:00:00+00:00``."""
    return datetime.fromtimestamp(int(occurred_at // 1), UTC).isoformat()


def profile_attributes(identifiers: Identifiers) -> dict[str, str]:
    """The Klaviyo profile attributes (`email`, `phone_number`, `external_id`, `_kx`)."""
    attributes: dict[str, str] = {}
    if identifiers.email:
        attributes["email"] = identifiers.email
    if identifiers.phone_number:
        attributes["phone_number"] = identifiers.phone_number
    if identifiers.external_id:
        attributes["external_id"] = identifiers.external_id
    if identifiers.kx:
        attributes["_kx"] = identifiers.kx
    return attributes


def is_backfill(event: OutboxEvent, settings: IntegrationSettings, now: float) -> bool:
    """True if the event is old enough to be sent without triggering flows."""
    return now - event.occurred_at > settings.backfill_after_s


def build_event(event: OutboxEvent, settings: IntegrationSettings, now: float) -> dict[str, Any]:
    """A Create Event body (``EventCreateQueryV2``) for one event."""
    attributes = _event_attributes(event, settings, now)
    attributes["profile"] = _profile(event)
    return {"data": {"type": "event", "attributes": attributes}}


def build_bulk_job(
    events: Sequence[OutboxEvent], settings: IntegrationSettings, now: float
) -> dict[str, Any]:
    """A Bulk Create Events body (``EventsBulkCreateJob``); events grouped under their profile.

    Groups keep the order in which each profile first appears, and events keep their order
    inside a group. Call :func:`plan_bulk_jobs` first: this function does not split.
    """
    groups: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = {}
    profiles: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for event in events:
        identity = _profile_key(event)
        if identity not in groups:
            groups[identity] = []
            profiles[identity] = _profile(event)
        groups[identity].append(_bulk_entry(event, settings, now))
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {
                "events-bulk-create": {
                    "data": [
                        {
                            "type": "event-bulk-create",
                            "attributes": {
                                "profile": profiles[identity],
                                "events": {"data": entries},
                            },
                        }
                        for identity, entries in groups.items()
                    ],
                }
            },
        }
    }


def plan_bulk_jobs(
    events: Sequence[OutboxEvent],
    settings: IntegrationSettings,
    now: float,
    max_events: int = MAX_BULK_EVENTS,
    max_bytes: int = MAX_BULK_BYTES,
) -> list[list[OutboxEvent]]:
    """Splits ``events`` into bulk jobs Klaviyo accepts, keeping their order where it can.

    Each job has at most ``max_events`` events and serializes to at most ``max_bytes`` (sizes
    are counted as if every event had a profile group of its own, an upper bound). An event
    that repeats (profile, metric, unique_id) of an earlier one goes into a later job than
    that one. An event too large for any job gets a job of its own: Klaviyo will reject it and
    the engine records why, rather than this function dropping it silently.
    """
    if max_events < 1:
        raise ValueError("max_events must be at least 1")
    jobs: list[_Job] = []
    first_open = 0
    last_job_of: dict[tuple[str, str, str, str], int] = {}
    for event in events:
        size = _entry_size(event, settings, now)
        keys = _dedupe_keys(event, settings)
        start = max([first_open, *(last_job_of[k] + 1 for k in keys if k in last_job_of)])
        index = start
        while index < len(jobs) and not jobs[index].fits(size, max_events, max_bytes):
            index += 1
        if index == len(jobs):
            jobs.append(_Job())
        job = jobs[index]
        job.add(event, size)
        for key in keys:
            last_job_of[key] = index
        while first_open < len(jobs) and jobs[first_open].full(max_events, max_bytes):
            first_open += 1
    return [job.events for job in jobs]


class _Job:
    __slots__ = ("events", "size")

    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []
        self.size = _JOB_ENVELOPE_BYTES

    def fits(self, size: int, max_events: int, max_bytes: int) -> bool:
        if not self.events:
            return True
        return len(self.events) < max_events and self.size + size <= max_bytes

    def full(self, max_events: int, max_bytes: int) -> bool:
        # "Full" only steers where the search starts; a small event may still fit later jobs.
        return len(self.events) >= max_events or self.size >= max_bytes

    def add(self, event: OutboxEvent, size: int) -> None:
        self.events.append(event)
        self.size += size


def _event_attributes(
    event: OutboxEvent, settings: IntegrationSettings, now: float
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "properties": dict(event_properties(event, settings)),
        "metric": {
            "data": {"type": "metric", "attributes": {"name": settings.metric_name(event.kind)}}
        },
        "time": format_time(event.occurred_at),
        "unique_id": event.source_id,
    }
    if event.value is not None:
        attributes["value"] = event.value
        if event.currency:
            attributes["value_currency"] = event.currency
    if is_backfill(event, settings, now):
        attributes["backfill"] = True
    return attributes


def _bulk_entry(event: OutboxEvent, settings: IntegrationSettings, now: float) -> dict[str, Any]:
    return {"type": "event", "attributes": _event_attributes(event, settings, now)}


def _profile(event: OutboxEvent) -> dict[str, Any]:
    return {"data": {"type": "profile", "attributes": profile_attributes(event.identifiers)}}


def _profile_key(event: OutboxEvent) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(profile_attributes(event.identifiers).items()))


def _dedupe_keys(
    event: OutboxEvent, settings: IntegrationSettings
) -> list[tuple[str, str, str, str]]:
    # Klaviyo resolves a profile from any one of its identifiers, so two events sharing any
    # identifier may land on one profile: treat a shared identifier as the same profile.
    metric = settings.metric_name(event.kind)
    return [
        (name, value, metric, event.source_id)
        for name, value in profile_attributes(event.identifiers).items()
    ]


def _entry_size(event: OutboxEvent, settings: IntegrationSettings, now: float) -> int:
    group = {
        "type": "event-bulk-create",
        "attributes": {
            "profile": _profile(event),
            "events": {"data": [_bulk_entry(event, settings, now)]},
        },
    }
    # +1 for the comma between groups; same separators and escaping as the client's encoder.
    return len(json.dumps(group, separators=(",", ":"), ensure_ascii=False).encode()) + 1


TEST_EVENT_METRIC: Final = "Elido Test Event"


def build_test_event(identifiers: Identifiers, unique_id: str, now: float) -> dict[str, Any]:
    """A Create Event body for the key check's test event (``VerifyIntegrationKey``).

    ``backfill`` is false so that the owner sees it as a live event; ``unique_id`` is new per
    test, so a second test is a second timeline entry rather than a silent duplicate.
    """
    return {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {"source": "Elido forwarder key check", "test": True},
                "metric": {"data": {"type": "metric", "attributes": {"name": TEST_EVENT_METRIC}}},
                "profile": {
                    "data": {"type": "profile", "attributes": profile_attributes(identifiers)}
                },
                "time": format_time(now),
                "unique_id": unique_id,
                "backfill": False,
            },
        }
    }
