"""The rules that decide a click's fate and a conversion's profile, shared by every backend.

A backend only answers the questions these rules ask of the database — which workspaces have
an integration, which click ids were already indexed, what a recorded click's identifiers
are — and writes the rows the rules produce. So SQLite and PostgreSQL answer the same click
the same way.

A click, in order:

1. its workspace has no integration → ``NO_INTEGRATION`` (counted by the caller, dropped);
2. its click id is already in the click index, or earlier in the same batch → ``DUPLICATE``;
3. it carries no identifier → ``ANONYMOUS`` (indexed, so a resend is a duplicate, and
   counted; never forwarded);
4. otherwise → ``QUEUED``: indexed and written to the outbox.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Final

from server.store._records import (
    ClickOutcome,
    ConversionOutcome,
    Identifiers,
    NewClick,
    NewConversion,
)


@dataclass(slots=True)
class ClickPlan:
    """What to write for a batch of clicks, and the outcome of each.

    Built in two steps: :func:`plan_clicks` settles the clicks that need no database answer
    beyond the integrations; :meth:`settle` takes the set of click ids the click index did
    not have yet and decides the rest.
    """

    clicks: Sequence[NewClick]
    outcomes: list[ClickOutcome]
    # Positions of the clicks to put into the click index (first of their id in the batch).
    candidates: list[int]
    # Filled by settle(): the clicks to write to the outbox, and anonymous clicks per workspace.
    queued: list[NewClick] = field(default_factory=list)
    anonymous: Counter[str] = field(default_factory=Counter)

    def candidate_keys(self) -> list[tuple[str, str]]:
        """(workspace id, click id) of every candidate, in batch order."""
        clicks = self.clicks
        return [(clicks[i].workspace_id, clicks[i].click_id) for i in self.candidates]

    def settle(self, fresh: Collection[tuple[str, str]] | None) -> None:
        """Decide every candidate: ``fresh`` holds the (workspace, click id) pairs that were
        not in the click index before this batch (i.e. that this batch indexed); None means
        every candidate was (the usual case, which then needs no lookups)."""
        clicks, outcomes = self.clicks, self.outcomes
        for i in self.candidates:
            click = clicks[i]
            if fresh is not None and (click.workspace_id, click.click_id) not in fresh:
                outcomes[i] = ClickOutcome.DUPLICATE
            elif click.identifiers.any():
                outcomes[i] = ClickOutcome.QUEUED
                self.queued.append(click)
            else:
                outcomes[i] = ClickOutcome.ANONYMOUS
                self.anonymous[click.workspace_id] += 1

    def indexed(self, fresh: Collection[tuple[str, str]] | None) -> list[NewClick]:
        """The candidates that this batch put into the click index (None: every one)."""
        clicks = self.clicks
        if fresh is None:
            return [clicks[i] for i in self.candidates]
        return [
            clicks[i]
            for i in self.candidates
            if (clicks[i].workspace_id, clicks[i].click_id) in fresh
        ]


def plan_clicks(clicks: Sequence[NewClick], integrated: Collection[str]) -> ClickPlan:
    """Rules 1 and 2 (within the batch): which clicks go on to the click index."""
    outcomes = [ClickOutcome.NO_INTEGRATION] * len(clicks)
    candidates: list[int] = []
    seen: set[tuple[str, str]] = set()
    for i, click in enumerate(clicks):
        if click.workspace_id not in integrated:
            continue
        key = (click.workspace_id, click.click_id)
        if key in seen:
            outcomes[i] = ClickOutcome.DUPLICATE
            continue
        seen.add(key)
        candidates.append(i)
    return ClickPlan(clicks, outcomes, candidates)


@dataclass(frozen=True, slots=True)
class ConversionDecision:
    """What to do with a conversion: its outcome and, when queued, the profile it goes to."""

    outcome: ConversionOutcome
    identifiers: Identifiers = field(default_factory=Identifiers)
    # Whether to record the conversion id (so a resend answers DUPLICATE).
    record: bool = False


def decide_conversion(
    conversion: NewConversion,
    integrated: bool,
    seen_before: bool,
    clicked_by: Identifiers | None,
) -> ConversionDecision:
    """Attribution: the recorded click's identifiers win over those the caller passed.

    ``clicked_by`` is the click index's entry for ``conversion.click_id`` (None when the click
    is unknown, expired or erased).
    """
    if not integrated:
        return ConversionDecision(ConversionOutcome.NO_INTEGRATION)
    if seen_before:
        return ConversionDecision(ConversionOutcome.DUPLICATE)
    identifiers = conversion.identifiers
    if clicked_by is not None:
        identifiers = clicked_by.merged_over(identifiers)
    if not identifiers.any():
        return ConversionDecision(ConversionOutcome.UNATTRIBUTED, record=True)
    return ConversionDecision(ConversionOutcome.QUEUED, identifiers, record=True)


_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(value: str) -> str:
    """``value`` with ASCII letters lower-cased only: what SQLite's NOCASE and PostgreSQL's
    ``lower(x COLLATE "C")`` compare, so both backends match an erased email alike."""
    return value.translate(_ASCII_LOWER)


def audit_where(
    workspace_id: str | None,
    since: float | None,
    until: float | None,
    before_id: int | None,
    placeholder: str,
) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause (or "") and its values for listing audit entries, in either
    backend's placeholder style (``?`` or ``%s``)."""
    clauses: list[str] = []
    params: list[object] = []
    for condition, value in (
        ("workspace_id = ", workspace_id),
        ("occurred_at >= ", since),
        ("occurred_at < ", until),
        ("audit_id < ", before_id),
    ):
        if value is not None:
            clauses.append(condition + placeholder)
            params.append(value)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params)
