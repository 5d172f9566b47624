"""The store interface: what the API and the delivery engine need from persistence.

SQLite (:mod:`server.store._sqlite`) implements it for a single replica; a PostgreSQL
implementation can follow for several replicas. Every method is one transaction. Intake
methods return only after their transaction is durably committed: that is what makes an ack
mean "never lost".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from server.store._records import (
    ClickOutcome,
    ConversionOutcome,
    DeliveryCounters,
    FailedEventRecord,
    IntegrationRecord,
    IntegrationSettings,
    NewClick,
    NewConversion,
    OutboxEvent,
)


class Store(Protocol):
    """Persistence for integrations, the outbox and the click index."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None:
        """Finish pending work and disconnect."""

    # -- integrations ------------------------------------------------------------------
    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        """The workspace's settings if it has an integration (from memory; no I/O)."""

    async def upsert_integration(
        self,
        workspace_id: str,
        ciphertext: str,
        key_fingerprint: str,
        key_version: int,
        settings: IntegrationSettings,
        now: float,
    ) -> tuple[IntegrationRecord, bool]:
        """Create or replace; a replaced key makes the integration active again.

        Returns the record and whether an integration existed before.
        """

    async def get_integration(self, workspace_id: str) -> IntegrationRecord | None:
        """The integration, or None."""

    async def list_integrations(self, after: str, limit: int) -> list[IntegrationRecord]:
        """Integrations with workspace id > ``after``, ordered, at most ``limit``."""

    async def delete_integration(self, workspace_id: str) -> int | None:
        """Delete the integration and its undelivered events; the count dropped, or None."""

    async def replace_ciphertext(
        self, workspace_id: str, old: str, new: str, key_version: int, now: float
    ) -> bool:
        """Compare-and-set the ciphertext (rewrap); False if it changed meanwhile."""

    async def reject_key(self, workspace_id: str, ciphertext: str, reason: str, now: float) -> bool:
        """Mark the key rejected, unless the ciphertext changed (a new key came meanwhile)."""

    async def delivery_counters(self, workspace_id: str) -> DeliveryCounters:
        """Counts and the last outcome for one workspace."""

    # -- intake --------------------------------------------------------------------------
    async def take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        """Index and queue clicks atomically; one outcome per click, in order."""

    async def take_conversion(self, conversion: NewConversion, now: float) -> ConversionOutcome:
        """Resolve the profile from the click index and queue the conversion."""

    # -- delivery ------------------------------------------------------------------------
    async def acquire_lease(self, workspace_id: str, owner: str, ttl_s: float, now: float) -> bool:
        """Take or renew the delivery lease of a workspace; False if another owner holds it."""

    async def release_lease(self, workspace_id: str, owner: str) -> None:
        """Give the lease up."""

    async def workspaces_with_due_events(self, now: float) -> list[str]:
        """Active integrations that have events due for delivery."""

    async def due_events(self, workspace_id: str, now: float, limit: int) -> list[OutboxEvent]:
        """Queued events due now, oldest first."""

    async def mark_delivered(self, workspace_id: str, event_ids: Sequence[int], now: float) -> None:
        """Remove delivered events from the outbox and count them."""

    async def mark_retry(
        self,
        workspace_id: str,
        event_ids: Sequence[int],
        next_attempt_at: float,
        error: str,
        now: float,
        count_attempt: bool = True,
    ) -> None:
        """Schedule another attempt."""

    async def mark_failed(
        self, workspace_id: str, event_ids: Sequence[int], error: str, now: float
    ) -> None:
        """Keep the events as failed (replayable)."""

    async def list_failed(
        self, workspace_id: str, after_event_id: int, limit: int
    ) -> list[FailedEventRecord]:
        """Failed events with id > ``after_event_id``, oldest first."""

    async def replay_failed(
        self, workspace_id: str, event_ids: Sequence[int] | None, now: float
    ) -> int:
        """Queue failed events again (all of the workspace's if ``event_ids`` is None)."""

    # -- housekeeping --------------------------------------------------------------------
    async def prune(self, now: float) -> int:
        """Forget click-index and conversion entries past the attribution window."""

    async def outbox_depth(self) -> tuple[int, int]:
        """(queued or held, failed) events across all workspaces."""
