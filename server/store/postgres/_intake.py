"""The intake transaction of a batch of clicks, written once for both ways of running it.

``click_statements`` is a generator: it yields each statement with its parameters, receives
the rows the statement returned, and returns the outcomes. The store's asyncio pool and the
intake workers' plain connections (:mod:`._writer`) drive it with their own cursors, so a
click meets the same SQL — and the rules of :mod:`server.store._rules` — on either path.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Final

from server.store._codec import settings_from_json
from server.store._records import ClickOutcome, IntegrationSettings, NewClick
from server.store._rules import plan_clicks

CHANNEL: Final = "forwarder_due"
DEADLOCK_RETRIES: Final = 3

# FOR SHARE: a removal waits for the transactions that saw the integration, then deletes
# what they queued.
_INTEGRATIONS_OF: Final = """SELECT workspace_id, settings FROM integrations
    WHERE workspace_id = ANY(%b) ORDER BY workspace_id FOR SHARE"""
_INDEX_CLICKS: Final = """INSERT INTO clicks (workspace_id, click_id, email, phone_number,
        external_id, kx, click_time, expires_at)
    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                         %b::float8[], %b::float8[])
    ON CONFLICT DO NOTHING
    RETURNING workspace_id, click_id"""
_QUEUE_CLICKS: Final = """INSERT INTO outbox (workspace_id, kind, source_id, occurred_at,
        created_at, email, phone_number, external_id, kx, payload, next_attempt_at)
    SELECT ws, 'click', id, t, %b, e, p, x, k, body, %b
    FROM unnest(%b::text[], %b::text[], %b::float8[], %b::text[], %b::text[], %b::text[],
                %b::text[], %b::bytea[]) WITH ORDINALITY AS s(ws, id, t, e, p, x, k, body, ord)
    ORDER BY ord"""
_COUNT_ANONYMOUS: Final = """UPDATE integrations SET anonymous_count = anonymous_count + n
    FROM unnest(%b::text[], %b::bigint[]) AS a(ws, n) WHERE workspace_id = a.ws"""
_NOTIFY: Final = "SELECT pg_notify(%s, '')"

Statement = tuple[str, Sequence[Any]]
Rows = list[tuple[Any, ...]]
Outcome = tuple[list[ClickOutcome], dict[str, IntegrationSettings]]


def click_statements(
    clicks: Sequence[NewClick], now: float, expires: float
) -> Generator[Statement, Rows, Outcome]:
    """Index and queue ``clicks``: the outcome of each, and the integrations read."""
    rows = yield _INTEGRATIONS_OF, (sorted({c.workspace_id for c in clicks}),)
    found = {ws: settings_from_json(text) for ws, text in rows}
    plan = plan_clicks(clicks, found)
    # In key order: every transaction takes the index's key locks in the same order.
    candidates = sorted(
        (clicks[i] for i in plan.candidates), key=lambda c: (c.workspace_id, c.click_id)
    )
    fresh: set[tuple[str, str]] = set()
    if candidates:
        rows = yield (
            _INDEX_CLICKS,
            (
                [c.workspace_id for c in candidates],
                [c.click_id for c in candidates],
                [c.identifiers.email for c in candidates],
                [c.identifiers.phone_number for c in candidates],
                [c.identifiers.external_id for c in candidates],
                [c.identifiers.kx for c in candidates],
                [c.click_time for c in candidates],
                [expires] * len(candidates),
            ),
        )
        fresh = {(ws, click_id) for ws, click_id in rows}
    plan.settle(fresh)
    queued = plan.queued
    if queued:
        yield (
            _QUEUE_CLICKS,
            (
                now,
                now,
                [c.workspace_id for c in queued],
                [c.click_id for c in queued],
                [c.click_time for c in queued],
                [c.identifiers.email for c in queued],
                [c.identifiers.phone_number for c in queued],
                [c.identifiers.external_id for c in queued],
                [c.identifiers.kx for c in queued],
                [c.payload for c in queued],
            ),
        )
        yield _NOTIFY, (CHANNEL,)
    if plan.anonymous:
        yield _COUNT_ANONYMOUS, (list(plan.anonymous), list(plan.anonymous.values()))
    return plan.outcomes, found
