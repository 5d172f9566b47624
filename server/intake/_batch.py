"""One StreamClicks batch: validate every click, then record the store's outcomes.

Used by the in-process path and by the intake worker processes, so a batch gets the same
answer wherever it is committed. It returns outcomes, not messages: the API layer builds the
response.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from elido.forwarder.v1 import forwarder_pb2 as pb

from server._errors import Violation
from server.intake._plain import SettingsLookup, plain_clicks
from server.intake._validation import detailed_click
from server.store._records import ClickOutcome, NewClick


@dataclass(slots=True)
class BatchOutcome:
    """What became of each click of a batch, in batch order.

    ``outcomes[i]`` is the store's outcome of click ``i``, or None when it was rejected, in
    which case ``violations[i]`` says why.
    """

    outcomes: list[ClickOutcome | None]
    violations: dict[int, list[Violation]] = field(default_factory=dict)

    def tally(self) -> Counter[str]:
        """Clicks per disposition (for the intake metric), e.g. {"queued": 498, "rejected": 2}."""
        counts = Counter(o.value for o in self.outcomes if o is not None)
        if self.violations:
            counts["rejected"] = len(self.violations)
        return counts


@dataclass(slots=True)
class ValidatedBatch:
    """A batch after validation: the clicks to commit and what is known so far."""

    outcome: BatchOutcome
    valid: list[NewClick]
    # Position in the batch of each valid click.
    slots: list[int]

    def finish(self, outcomes: Sequence[ClickOutcome]) -> BatchOutcome:
        """Record the store's outcome of every committed click."""
        results = self.outcome.outcomes
        for slot, outcome in zip(self.slots, outcomes, strict=True):
            results[slot] = outcome
        return self.outcome


def validate_batch(
    request: pb.StreamClicksRequest, settings_for: SettingsLookup, now: float
) -> ValidatedBatch:
    """Validate every click; invalid ones are rejected with their violations.

    The ordinary clicks are proven valid together (:mod:`server.intake._plain`); only the
    others are checked one by one. Valid clicks keep their batch order: of two with one id,
    the first sent is the one queued.
    """
    # Unknown fields are dropped, never stored (``_validation``'s docstring): the request is
    # ours to change, and is not read again after validation.
    request.DiscardUnknownFields()
    clicks = request.clicks
    plain = plain_clicks(clicks, now, settings_for)
    if len(plain) == len(clicks):
        return ValidatedBatch(BatchOutcome([None] * len(clicks)), list(plain.values()), list(plain))
    outcome = BatchOutcome([None] * len(clicks))
    valid: list[NewClick] = []
    slots: list[int] = []
    for i, click in enumerate(clicks):
        checked = plain.get(i) or detailed_click(click, f"clicks[{i}]", settings_for, now)
        if isinstance(checked, list):
            outcome.violations[i] = checked
        else:
            valid.append(checked)
            slots.append(i)
    return ValidatedBatch(outcome, valid, slots)
