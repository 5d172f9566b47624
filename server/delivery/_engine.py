"""The delivery engine: moves outbox events to Klaviyo, per workspace, within its limits.

One asyncio task per workspace with due events, holding that workspace's lease in the store,
so a Klaviyo account's rate limits are enforced by exactly one limiter even across replicas,
and a workspace that is throttled, failing or has a rejected key only ever waits on itself
(invariant 4). A small backlog goes out as single Create Event requests (latency); a large one
as Bulk Create Events jobs (throughput).

Outcomes: 202 deletes the events; 429 and transient failures reschedule them with backoff
(429s don't count as attempts); a 400 marks a single event failed with Klaviyo's detail (a
rejected bulk job is retried event by event to find the bad one); 401/403 marks the key
rejected and leaves the events queued (held) until a new key is registered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Final

import structlog

from server._metrics import (
    DELIVERED,
    DELIVERY_LATENCY,
    FAILED_EVENTS,
    KLAVIYO_RESPONSES,
    LEASES,
)
from server._secret import PrivateKey
from server.delivery._config import DeliveryConfig
from server.delivery._klaviyo import Endpoint, KlaviyoClient, KlaviyoResult, Outcome
from server.delivery._payloads import build_bulk_job, build_event, plan_bulk_jobs
from server.delivery._ratelimit import AccountRateLimiter
from server.store import Store
from server.store._records import IntegrationRecord, IntegrationState, OutboxEvent
from server.vault import KeyDestroyed, KeyVault, VaultDenied, VaultUnavailable

_log = structlog.get_logger(__name__)

_KEY_GONE: Final = "the key can no longer be decrypted (transit key destroyed); register a new key"


class _KeyRejected(Exception):
    """Raised inside a workspace round when Klaviyo refused the key."""


class DeliveryEngine:
    """Runs delivery for every workspace with due events."""

    def __init__(
        self,
        store: Store,
        vault: KeyVault,
        client: KlaviyoClient,
        config: DeliveryConfig,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._vault = vault
        self._client = client
        self._config = config
        self._owner = (
            owner
            or config.instance_id
            or socket.gethostname()
            or f"forwarder-{uuid.uuid4().hex[:12]}"
        )
        self._clock = clock
        self._wake = asyncio.Event()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._limiters: dict[bytes, AccountRateLimiter] = {}
        self._scheduler: asyncio.Task[None] | None = None

    @property
    def active_leases(self) -> int:
        """Delivery leases this engine holds or is taking right now."""
        return len(self._workers)

    def notify(self) -> None:
        """Events became due: look now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Start scheduling deliveries."""
        if not self._config.enabled:
            _log.info("delivery disabled: intake only")
            return
        self._scheduler = asyncio.create_task(self._schedule(), name="delivery-scheduler")

    async def stop(self) -> None:
        """Stop: in-flight requests are abandoned; their events stay queued and are re-sent
        later (Klaviyo dedupes on unique_id), so stopping never loses or duplicates."""
        tasks = [t for t in (self._scheduler, *self._workers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._scheduler = None

    async def _schedule(self) -> None:
        while True:
            self._wake.clear()
            try:
                due = await self._store.workspaces_with_due_events(self._clock())
            except Exception as exc:
                _log.error("cannot read the outbox", error=str(exc))
                due = []
            for workspace_id in due:
                if workspace_id not in self._workers:
                    self._workers[workspace_id] = asyncio.create_task(
                        self._run_workspace(workspace_id), name=f"deliver-{workspace_id}"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.poll_interval_s)

    async def _run_workspace(self, workspace_id: str) -> None:
        log = _log.bind(workspace_id=workspace_id)
        config = self._config
        try:
            while True:
                now = self._clock()
                leased = await self._store.acquire_lease(
                    workspace_id, self._owner, config.lease_ttl_s, now
                )
                LEASES.labels("acquired" if leased else "held_elsewhere").inc()
                if not leased:
                    return  # another replica delivers this workspace
                record = await self._store.get_integration(workspace_id)
                if record is None or record.state is not IntegrationState.ACTIVE:
                    return
                events = await self._store.due_events(workspace_id, now, config.fetch_limit)
                if not events:
                    return
                try:
                    key = await self._vault.decrypt(workspace_id, record.ciphertext)
                except (VaultUnavailable, VaultDenied) as exc:
                    # Delivery pauses for this workspace alone; intake carries on.
                    log.warning("vault unavailable; delivery paused", error=str(exc))
                    await asyncio.sleep(config.vault_retry_s)
                    continue
                except KeyDestroyed:
                    await self._store.reject_key(workspace_id, record.ciphertext, _KEY_GONE, now)
                    return
                limiter = self._limiter(key)
                try:
                    if len(events) <= config.single_threshold:
                        await self._send_singles(record, key, limiter, events)
                    else:
                        await self._send_bulk(record, key, limiter, events)
                except _KeyRejected:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery round failed")
            await asyncio.sleep(1.0)
        finally:
            self._workers.pop(workspace_id, None)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.release_lease(workspace_id, self._owner))
            # Events may have arrived while this task was finishing: look again now.
            self._wake.set()

    def _limiter(self, key: PrivateKey) -> AccountRateLimiter:
        # Klaviyo limits per account, and an account can't be identified with write-only
        # scopes; the key is the closest thing we see. Workspaces sharing a key share a
        # limiter. Keyed by a digest so no raw key sits in a long-lived structure.
        digest = hashlib.sha256(key.reveal().encode()).digest()
        limiter = self._limiters.get(digest)
        if limiter is None:
            limiter = self._limiters[digest] = AccountRateLimiter(self._config.rate_limits)
        return limiter

    # -- sending -------------------------------------------------------------------------
    async def _send_singles(
        self,
        record: IntegrationRecord,
        key: PrivateKey,
        limiter: AccountRateLimiter,
        events: Sequence[OutboxEvent],
    ) -> None:
        units = [[event] for event in events]
        results = await self._post(record, key, limiter, Endpoint.EVENTS, units)
        await self._apply(record, Endpoint.EVENTS, list(zip(units, results, strict=True)))

    async def _send_bulk(
        self,
        record: IntegrationRecord,
        key: PrivateKey,
        limiter: AccountRateLimiter,
        events: Sequence[OutboxEvent],
    ) -> None:
        jobs = plan_bulk_jobs(events, record.settings, self._clock())
        results = await self._post(record, key, limiter, Endpoint.BULK, jobs)
        invalid_jobs = [
            job for job, r in zip(jobs, results, strict=True) if r.outcome is Outcome.INVALID
        ]
        await self._apply(
            record,
            Endpoint.BULK,
            [
                (job, r)
                for job, r in zip(jobs, results, strict=True)
                if r.outcome is not Outcome.INVALID
            ],
        )
        for job in invalid_jobs:
            # Klaviyo refuses a whole job for one bad event: find it by sending one by one.
            await self._send_singles(record, key, limiter, job)

    async def _post(
        self,
        record: IntegrationRecord,
        key: PrivateKey,
        limiter: AccountRateLimiter,
        endpoint: Endpoint,
        units: Sequence[list[OutboxEvent]],
    ) -> list[KlaviyoResult]:
        """Send each unit (one event, or one bulk job) within the limiter; one result each."""
        single = endpoint is Endpoint.EVENTS
        gate = asyncio.Semaphore(
            self._config.single_concurrency if single else self._config.bulk_concurrency
        )

        async def send(unit: list[OutboxEvent]) -> KlaviyoResult:
            async with gate:
                await limiter.acquire(endpoint)
                now = self._clock()
                if single:
                    body = build_event(unit[0], record.settings, now)
                    result = await self._client.create_event(key, body)
                else:
                    body = build_bulk_job(unit, record.settings, now)
                    result = await self._client.create_bulk_job(key, body)
                limiter.observe(endpoint, result)
                KLAVIYO_RESPONSES.labels(endpoint.value, result.outcome.value).inc()
                return result

        return list(await asyncio.gather(*(send(unit) for unit in units)))

    async def _apply(
        self,
        record: IntegrationRecord,
        endpoint: Endpoint,
        outcomes: Sequence[tuple[Sequence[OutboxEvent], KlaviyoResult]],
    ) -> None:
        ws = record.workspace_id
        now = self._clock()
        delivered: list[int] = []
        later: dict[tuple[float, str, bool], list[int]] = defaultdict(list)
        failed: dict[str, list[int]] = defaultdict(list)
        key_rejected: KlaviyoResult | None = None
        retry = self._config.retry
        for events, result in outcomes:
            if result.outcome is Outcome.ACCEPTED:
                delivered.extend(e.event_id for e in events)
                for e in events:
                    DELIVERY_LATENCY.observe(max(0.0, now - e.created_at))
            elif result.outcome is Outcome.KEY_REJECTED:
                key_rejected = result
            elif result.outcome is Outcome.INVALID:
                detail = f"Klaviyo rejected the event: {result.detail}"
                failed[detail].extend(e.event_id for e in events)
            else:
                for e in events:
                    if result.outcome is Outcome.TRANSIENT and now - e.created_at > retry.max_age_s:
                        failed[f"gave up after {e.attempts + 1} attempts: {result.detail}"].append(
                            e.event_id
                        )
                        continue
                    rate_limited = result.outcome is Outcome.RATE_LIMITED
                    if rate_limited and result.retry_after_s is not None:
                        delay = result.retry_after_s
                    else:
                        delay = min(retry.base_s * retry.multiplier**e.attempts, retry.max_delay_s)
                        delay *= 1 + random.uniform(-retry.jitter, retry.jitter)  # noqa: S311 - jitter, not crypto
                    label = f"{result.outcome.value}: {result.detail}"
                    later[(round(now + delay, 1), label, not rate_limited)].append(e.event_id)
        if delivered:
            await self._store.mark_delivered(ws, delivered, now)
            DELIVERED.labels(endpoint.value).inc(len(delivered))
        for (when, label, counts), ids in later.items():
            await self._store.mark_retry(ws, ids, when, label, now, count_attempt=counts)
        for detail, ids in failed.items():
            await self._store.mark_failed(ws, ids, detail, now)
            FAILED_EVENTS.labels("invalid" if detail.startswith("Klaviyo") else "expired").inc(
                len(ids)
            )
        if key_rejected is not None:
            reason = f"Klaviyo answered {key_rejected.status_code}: {key_rejected.detail}"
            await self._store.reject_key(ws, record.ciphertext, reason, now)
            self._vault.forget(ws)
            _log.warning(
                "klaviyo rejected the key; events held",
                workspace_id=ws,
                status=key_rejected.status_code,
            )
            raise _KeyRejected
