"""One StreamClicks batch: validate every click, then fill in the store's outcomes.

Used by the in-process path and by the intake worker processes, so a batch gets the same
answer wherever it is committed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from elido.forwarder.v1 import forwarder_pb2 as pb

from server.api._convert import CLICK_DISPOSITION
from server.intake._validation import SettingsLookup, validate_click
from server.store._records import ClickOutcome, NewClick


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What became of a batch."""

    # The serialized StreamClicksResponse: the batch id and one result per click, in order.
    response: bytes
    # Clicks per disposition (for the intake metric), e.g. {"queued": 498, "rejected": 2}.
    tally: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ValidatedBatch:
    """A batch after validation: the response so far and the clicks to commit."""

    response: pb.StreamClicksResponse
    valid: list[NewClick]
    # Position in the batch (and so in ``response.results``) of each valid click.
    slots: list[int]
    tally: Counter[str]

    def finish(self, outcomes: Sequence[ClickOutcome]) -> BatchResult:
        """Fill in the store's outcome of every committed click."""
        results = self.response.results
        for slot, outcome in zip(self.slots, outcomes, strict=True):
            results[slot].disposition = CLICK_DISPOSITION[outcome]
            self.tally[outcome.value] += 1
        return BatchResult(self.response.SerializeToString(), dict(self.tally))


def validate_batch(
    request: pb.StreamClicksRequest, settings_for: SettingsLookup, now: float
) -> ValidatedBatch:
    """Validate every click; invalid ones are answered REJECTED with their violations."""
    response = pb.StreamClicksResponse(batch_id=request.batch_id)
    tally: Counter[str] = Counter()
    valid: list[NewClick] = []
    slots: list[int] = []
    for i, click in enumerate(request.clicks):
        checked = validate_click(click, f"clicks[{i}]", settings_for, now)
        result = response.results.add(click_id=click.click_id)
        if isinstance(checked, list):
            result.disposition = pb.CLICK_DISPOSITION_REJECTED
            for v in checked:
                result.field_violations.add(field=v.field, description=v.description)
            tally["rejected"] += 1
        else:
            valid.append(checked)
            slots.append(i)
    return ValidatedBatch(response, valid, slots, tally)
