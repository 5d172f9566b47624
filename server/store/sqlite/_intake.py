"""Intake statements: a batch of clicks or a conversion, inside the caller's transaction.

Shared by the store's writer thread and the click writer of the intake worker processes,
so a click meets the same rules (:mod:`server.store._rules`) on either path. The caller holds
the write lock and an open transaction; these functions only read and write rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from server.store._codec import properties_to_json, settings_from_json
from server.store._records import (
    ClickOutcome,
    ConversionOutcome,
    EventKind,
    Identifiers,
    IntegrationSettings,
    NewClick,
    NewConversion,
)
from server.store._rules import ClickPlan, decide_conversion, plan_clicks

_CHUNK: Final = 500

INSERT_OUTBOX: Final = """INSERT INTO outbox (workspace_id, kind, source_id, occurred_at,
    created_at, email, phone_number, external_id, kx, payload, value, currency, next_attempt_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def integrations_of(
    conn: sqlite3.Connection, workspace_ids: Iterable[str]
) -> dict[str, IntegrationSettings]:
    """The settings of those of ``workspace_ids`` that have an integration."""
    found: dict[str, IntegrationSettings] = {}
    for chunk in _chunks(list(set(workspace_ids))):
        marks = ",".join("?" * len(chunk))
        for workspace_id, text in conn.execute(
            f"SELECT workspace_id, settings FROM integrations WHERE workspace_id IN ({marks})",  # noqa: S608 - only placeholders are interpolated
            chunk,
        ):
            found[workspace_id] = settings_from_json(text)
    return found


INSERT_CLICK: Final = "INSERT INTO clicks VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


@dataclass(slots=True)
class PreparedClicks:
    """A batch's rows, built before the write lock is taken.

    Built on two assumptions that :func:`insert_clicks` checks under the lock: that the
    batch's workspaces with an integration are ``integrated``, and that none of its click
    ids is in the click index yet (a resend is the rare case). Either wrong, the batch is
    planned again inside the transaction; so the lock is held for the statements alone.
    """

    clicks: Sequence[NewClick]
    now: float
    expires: float
    workspaces: frozenset[str]
    integrated: frozenset[str]
    plan: ClickPlan
    index_rows: list[tuple[Any, ...]]
    outbox_rows: list[tuple[Any, ...]]


def prepare_clicks(
    clicks: Sequence[NewClick],
    now: float,
    expires: float,
    integrated: Callable[[str], bool] | None = None,
    fresh: Collection[tuple[str, str]] | None = None,
) -> PreparedClicks:
    """Plan ``clicks`` and build their rows, assuming the workspaces for which
    ``integrated`` is true (all when None) have an integration and ``fresh`` holds the click
    ids not indexed yet (all when None)."""
    workspaces = frozenset(c.workspace_id for c in clicks)
    assumed = frozenset(ws for ws in workspaces if integrated is None or integrated(ws))
    plan = plan_clicks(clicks, assumed)
    plan.settle(fresh)
    index_rows = [
        (c.workspace_id, c.click_id, (who := c.identifiers).email, who.phone_number,
         who.external_id, who.kx, c.click_time, expires)
        for c in plan.indexed(fresh)
    ]  # fmt: skip
    click_kind = EventKind.CLICK.value
    outbox_rows = [
        (c.workspace_id, click_kind, c.click_id, c.click_time, now, (who := c.identifiers).email,
         who.phone_number, who.external_id, who.kx, c.payload, None, "", now)
        for c in plan.queued
    ]  # fmt: skip
    return PreparedClicks(clicks, now, expires, workspaces, assumed, plan, index_rows, outbox_rows)


def _indexed_already(
    conn: sqlite3.Connection, keys: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    by_workspace: dict[str, list[str]] = {}
    for workspace_id, click_id in keys:
        by_workspace.setdefault(workspace_id, []).append(click_id)
    known: set[tuple[str, str]] = set()
    for workspace_id, ids in by_workspace.items():
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            known.update(
                (workspace_id, r[0])
                for r in conn.execute(
                    f"SELECT click_id FROM clicks WHERE workspace_id = ? AND click_id IN ({marks})",  # noqa: S608 - only placeholders are interpolated
                    (workspace_id, *chunk),
                )
            )
    return known


def insert_clicks(
    conn: sqlite3.Connection, prepared: PreparedClicks
) -> tuple[list[ClickOutcome], dict[str, IntegrationSettings]]:
    """Index and queue the clicks; one outcome per click, and the integrations consulted.

    The integrations are read in this transaction, under the write lock: a workspace removed
    by any process before it began gets NO_INTEGRATION, never a queued event.
    """
    p = prepared
    settings = integrations_of(conn, p.workspaces)
    if settings.keys() != p.integrated:
        p = prepare_clicks(p.clicks, p.now, p.expires, settings.__contains__)
    if p.index_rows:
        # Every id new, as usual: the click index's primary key proves it, no lookup needed.
        conn.execute("SAVEPOINT fresh_clicks")
        try:
            conn.executemany(INSERT_CLICK, p.index_rows)
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK TO fresh_clicks")
            keys = p.plan.candidate_keys()
            known = _indexed_already(conn, keys)
            p = prepare_clicks(
                p.clicks,
                p.now,
                p.expires,
                settings.__contains__,
                {k for k in keys if k not in known},
            )
            conn.executemany(INSERT_CLICK, p.index_rows)
        conn.execute("RELEASE fresh_clicks")
    if p.outbox_rows:
        conn.executemany(INSERT_OUTBOX, p.outbox_rows)
    if p.plan.anonymous:
        conn.executemany(
            "UPDATE integrations SET anonymous_count = anonymous_count + ? WHERE workspace_id = ?",
            [(n, ws) for ws, n in p.plan.anonymous.items()],
        )
    return p.plan.outcomes, settings


def insert_conversion(
    conn: sqlite3.Connection, conversion: NewConversion, now: float, expires: float
) -> ConversionOutcome:
    """Attribute and queue one conversion."""
    ws = conversion.workspace_id
    integrated = (
        conn.execute("SELECT 1 FROM integrations WHERE workspace_id = ?", (ws,)).fetchone()
        is not None
    )
    seen = (
        integrated
        and conn.execute(
            "SELECT 1 FROM conversions WHERE workspace_id = ? AND conversion_id = ?",
            (ws, conversion.conversion_id),
        ).fetchone()
        is not None
    )
    clicked_by: Identifiers | None = None
    if integrated and not seen and conversion.click_id:
        row = conn.execute(
            "SELECT email, phone_number, external_id, kx FROM clicks WHERE workspace_id = ? AND click_id = ?",
            (ws, conversion.click_id),
        ).fetchone()
        clicked_by = None if row is None else Identifiers(*row)
    decision = decide_conversion(conversion, integrated, seen, clicked_by)
    if decision.record:
        conn.execute(
            "INSERT INTO conversions VALUES (?, ?, ?)", (ws, conversion.conversion_id, expires)
        )
    if decision.outcome is ConversionOutcome.QUEUED:
        who = decision.identifiers
        conn.execute(
            INSERT_OUTBOX,
            (ws, EventKind.CONVERSION.value, conversion.conversion_id, conversion.conversion_time,
             now, who.email, who.phone_number, who.external_id, who.kx,
             properties_to_json(conversion.properties), conversion.value, conversion.currency, now),
        )  # fmt: skip
    return decision.outcome
