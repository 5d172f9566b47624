"""The store interface: what the API, intake and the delivery engine need from persistence.

Two backends implement it: SQLite (:mod:`server.store.sqlite`, the embedded default, one host)
and PostgreSQL (:mod:`server.store.postgres`, any number of replicas). Nothing outside
``server/store/`` knows which one runs. Every method is one transaction. Intake methods
return only after their transaction is durably committed: that is what makes an ack mean
"never lost".

Every replica sees every other's committed writes: a workspace registered through one
replica has its clicks queued by all, and once its removal has returned, no replica queues
its clicks any more (intake reads the batch's integrations inside its own transaction).

Delivery writes are **fenced**: each names the :class:`Lease` it was made under, and the
store refuses it (:class:`LeaseLost`) once that lease has changed hands. Lease times are the
database's clock, never a replica's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from server.store._records import (
    AuditEntry,
    AuditRecord,
    ClickOutcome,
    ConversionOutcome,
    DeliveryCounters,
    DueWorkspace,
    ErasureCounts,
    ErasureTargets,
    FailedEventRecord,
    FailedSelection,
    IntegrationRecord,
    IntegrationSettings,
    IntegrationState,
    Lease,
    NewClick,
    NewConversion,
    OutboxEvent,
)


class ClickWriter(Protocol):
    """Commits click batches from another process (the intake workers); synchronous."""

    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        """Last known settings of the workspace (a hint for extracting identifiers)."""

    def take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        """Index and queue the clicks in one durable transaction; one outcome per click."""

    def close(self) -> None:
        """Disconnect."""


class Store(Protocol):
    """Persistence for integrations, the outbox, the click index and leases."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None:
        """Finish pending work and disconnect."""

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever any replica queued events (where the backend can tell)."""

    # -- integrations ------------------------------------------------------------------
    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        """Last known settings of the workspace, from memory (no I/O).

        A hint for extracting identifiers from a click's URL before it is committed; it is
        refreshed by every intake transaction. Whether a click has an integration is decided
        in the transaction, never from this.
        """

    async def load_settings(self, workspace_ids: Collection[str]) -> None:
        """Make :meth:`settings_for` answer for these workspaces: one read for those it does
        not know (a workspace registered through another replica), none when it knows all."""

    async def upsert_integration(
        self,
        workspace_id: str,
        ciphertext: str,
        key_fingerprint: str,
        key_version: int,
        account: str,
        settings: IntegrationSettings,
        now: float,
        state: IntegrationState = IntegrationState.ACTIVE,
        state_reason: str = "",
    ) -> tuple[IntegrationRecord, bool]:
        """Create or replace; a replaced key takes ``state`` (active, or unverified when
        Klaviyo could not confirm it) and makes held events due again.

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

    async def set_key_state(
        self,
        workspace_id: str,
        ciphertext: str,
        state: IntegrationState,
        reason: str,
        now: float,
        only_from: IntegrationState | None = None,
    ) -> bool:
        """Set the state a key check found, unless the ciphertext changed meanwhile (a new
        key came) or, with ``only_from``, the state is no longer that one. Events held under
        a rejected key are due again when the new state delivers. True if it was set.
        """

    async def set_account(self, workspace_id: str, ciphertext: str, account: str) -> None:
        """Record the key's account, unless the ciphertext changed meanwhile."""

    async def delivery_counters(self, workspace_id: str) -> DeliveryCounters:
        """Counts and the last outcome for one workspace."""

    # -- intake --------------------------------------------------------------------------
    async def take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        """Index and queue clicks atomically; one outcome per click, in order."""

    async def take_conversion(self, conversion: NewConversion, now: float) -> ConversionOutcome:
        """Resolve the profile from the click index and queue the conversion."""

    # -- leases --------------------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        """Take the lease ``name`` if it is free, expired or already ``owner``'s; else None.

        Every acquisition gets a new fencing token, so an earlier holder (another replica,
        or this one before a restart) is fenced out. The lease carries the previous holder's
        last usage record (:class:`LeaseHandover`) when there was one.
        """

    async def renew_lease(self, lease: Lease, usage: str = "") -> Lease | None:
        """Extend the lease by its TTL from now and record ``usage``; None if it changed
        hands meanwhile."""

    async def release_lease(self, lease: Lease, usage: str = "") -> None:
        """Give the lease up (if still held) with a last usage record, so another replica
        can take it at once."""

    # -- delivery (fenced) ---------------------------------------------------------------
    async def workspaces_with_due_events(self, now: float) -> list[DueWorkspace]:
        """Integrations whose state delivers (active, unverified) that have events due for
        delivery, with their accounts."""

    async def due_events(self, workspace_id: str, now: float, limit: int) -> list[OutboxEvent]:
        """Queued events due now, oldest first."""

    async def mark_delivered(
        self, lease: Lease, workspace_id: str, event_ids: Sequence[int], now: float
    ) -> None:
        """Remove delivered events from the outbox and count them."""

    async def mark_retry(
        self,
        lease: Lease,
        workspace_id: str,
        event_ids: Sequence[int],
        next_attempt_at: float,
        error: str,
        now: float,
        count_attempt: bool = True,
    ) -> None:
        """Schedule another attempt."""

    async def mark_failed(
        self, lease: Lease, workspace_id: str, event_ids: Sequence[int], error: str, now: float
    ) -> None:
        """Keep the events as failed (replayable)."""

    async def reject_key(
        self, lease: Lease, workspace_id: str, ciphertext: str, reason: str, now: float
    ) -> bool:
        """Mark the key rejected, unless the ciphertext changed (a new key came meanwhile)."""

    # -- failed events -------------------------------------------------------------------
    async def list_failed(
        self, workspace_id: str, after_event_id: int, limit: int
    ) -> list[FailedEventRecord]:
        """Failed events with id > ``after_event_id``, oldest first."""

    async def replay_failed(
        self,
        workspace_id: str,
        event_ids: Sequence[int] | None,
        now: float,
        *,
        selection: FailedSelection | None = None,
        dry_run: bool = False,
    ) -> int:
        """Queue failed events again: those named by ``event_ids`` (None: any) that also
        match ``selection``. Their ``unique_id`` (source id) and times are kept, so Klaviyo
        dedupes a repeat and stale ones still go as backfill. With ``dry_run`` nothing
        changes; the count is how many would be replayed."""

    # -- erasure ---------------------------------------------------------------------------
    async def erase_identifiers(
        self, workspace_id: str | None, targets: ErasureTargets
    ) -> ErasureCounts:
        """Delete the click-index entries and the undelivered (queued, held or failed) events
        carrying any of ``targets``, in one workspace or (None) in all; durable on return,
        and no copy of the deleted rows left readable in the store's files where the
        backend can promise it (SQLite: secure_delete and a truncating WAL checkpoint;
        PostgreSQL: a plain VACUUM of the touched tables, see docs/operator.md)."""

    # -- audit trail -----------------------------------------------------------------------
    async def record_audit(self, entry: AuditEntry) -> int:
        """Append an entry (durable on return); its id."""

    async def list_audit(
        self,
        workspace_id: str | None,
        since: float | None,
        until: float | None,
        before_id: int | None,
        limit: int,
    ) -> list[AuditRecord]:
        """Entries newest first: of one workspace (None: all), that happened at or after
        ``since`` and before ``until``, with id < ``before_id``; at most ``limit``."""

    async def prune_audit(self, before: float) -> int:
        """Delete the entries older than ``before`` (the retention); how many."""

    # -- housekeeping --------------------------------------------------------------------
    async def prune(self, now: float) -> int:
        """Forget click-index and conversion entries past the attribution window."""

    async def outbox_depth(self) -> tuple[int, int]:
        """(queued or held, failed) events across all workspaces."""
