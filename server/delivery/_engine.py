"""The delivery engine: moves outbox events to Klaviyo, per account, within its limits.

Klaviyo limits requests per account, and workspaces registered with the same key share one
(``IntegrationRecord.account``). So delivery is owned per account: one asyncio task per
account with due events, holding that account's **lease** in the store. Exactly one replica
delivers an account at a time, with one rate limiter, so the account's limits hold across
replicas; and a workspace that is throttled, failing or has a rejected key only ever waits
on itself and the workspaces sharing its account (invariant 4). A workspace whose account
is not known yet (registered before accounts were recorded) is its own group until its key
is next decrypted.

The lease is renewed in the background every third of its TTL for as long as the task
works — also while it waits on Klaviyo's limits — and is checked before every request: once
the last successful renewal is a TTL old (the replica was paused, or the database is
unreachable), the task stops sending. Every outbox write names the lease and the store
refuses it once the lease changed hands (fencing). A replica that dies has its accounts
taken over by another within the TTL.

A small backlog goes out as single Create Event requests (latency); a large one as Bulk
Create Events jobs (throughput). Outcomes: 202 deletes the events; 429 and transient
failures reschedule them with backoff (429s don't count as attempts); a 400 marks a single
event failed with Klaviyo's detail (a rejected bulk job is retried event by event to find
the bad one); 401/403 marks the key rejected and leaves the events queued (held) until a
new key is registered. An integration registered while Klaviyo could not confirm its key
(``unverified``) is delivered like an active one, and its first 202 makes it active.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from server.store import LeaseLost, Store
from server.store._records import (
    DueWorkspace,
    IntegrationRecord,
    IntegrationState,
    Lease,
    LeaseHandover,
    OutboxEvent,
)
from server.vault import KeyDestroyed, KeyVault, VaultDenied, VaultUnavailable

_log = structlog.get_logger(__name__)

_KEY_GONE: Final = "the key can no longer be decrypted (transit key destroyed); register a new key"


class _KeyRejected(Exception):
    """Raised inside a workspace round when Klaviyo refused the key."""


def _take_over(limiter: AccountRateLimiter, handover: LeaseHandover) -> None:
    """Start the limiter from what the lease's previous holder recorded."""
    try:
        usage = json.loads(handover.usage) if handover.usage else {}
    except ValueError:
        usage = {}
    if not isinstance(usage, dict):
        usage = {}
    limiter.take_over(usage, handover.usage_age_s, handover.valid_for_s)


def lease_name(due: DueWorkspace) -> str:
    """The delivery lease a workspace is delivered under: its account's, else its own."""
    return f"account:{due.account}" if due.account else f"workspace:{due.workspace_id}"


class HeldLease:
    """A lease renewed in the background; :meth:`check` before acting under it.

    Every renewal also records the account's rate-limiter usage with the lease, so that a
    replica taking the account over (after this one died or froze) starts from it.
    """

    def __init__(
        self,
        store: Store,
        lease: Lease,
        usage: Callable[[], str],
        clock: Callable[[], float] = time.monotonic,
    ):
        self._store = store
        self._usage = usage
        self._clock = clock
        self.lease = lease
        # Measured from before the request that granted it, so never later than the
        # database's own expiry.
        self._valid_until = clock() + lease.ttl_s
        self._lost = False

    def check(self) -> Lease:
        """The lease, if this replica may still act under it; raises LeaseLost otherwise."""
        if self._lost or self._clock() >= self._valid_until:
            raise LeaseLost(f"lease {self.lease.name} lapsed")
        return self.lease

    async def renew_forever(self) -> None:
        """Renew every third of the TTL until cancelled or the lease is lost."""
        log = _log.bind(lease=self.lease.name)
        while not self._lost:
            await asyncio.sleep(self.lease.ttl_s / 3)
            started = self._clock()
            try:
                renewed = await self._store.renew_lease(self.lease, self._usage())
            except Exception as exc:  # unreachable database: keep trying until it lapses
                log.warning("lease renewal failed", error=str(exc))
                continue
            if renewed is None:
                log.warning("lease lost to another replica")
                self._lost = True
                return
            self.lease = renewed
            self._valid_until = started + renewed.ttl_s


class DeliveryEngine:
    """Runs delivery for every account with due events."""

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
        self.owner = (
            owner
            or config.instance_id
            or socket.gethostname()
            or f"forwarder-{uuid.uuid4().hex[:12]}"
        )
        self._clock = clock
        self._wake = asyncio.Event()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._limiters: dict[str, AccountRateLimiter] = {}
        # The fencing token of the last lease this engine held, per lease name.
        self._tokens: dict[str, int] = {}
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
        self._store.subscribe(self.notify)
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
            for name in dict.fromkeys(lease_name(d) for d in due):
                if name not in self._workers:
                    self._workers[name] = asyncio.create_task(
                        self._run_lease(name), name=f"deliver-{name}"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._config.poll_interval_s)

    async def _run_lease(self, name: str) -> None:
        log = _log.bind(lease=name)
        held: HeldLease | None = None
        renewer: asyncio.Task[None] | None = None
        try:
            lease = await self._store.acquire_lease(name, self.owner, self._config.lease_ttl_s)
            LEASES.labels("held_elsewhere" if lease is None else "acquired").inc()
            if lease is None:
                return  # another replica delivers this account
            limiter = self._limiter(name)
            handover = lease.handover
            if handover is not None and handover.token != self._tokens.get(name):
                # Another holder (or this replica before a restart) had the lease last: start
                # from its record. After our own release, our limiter is exact already.
                _take_over(limiter, handover)
            self._tokens[name] = lease.token
            held = HeldLease(self._store, lease, lambda: json.dumps(limiter.usage()))
            renewer = asyncio.create_task(held.renew_forever(), name=f"renew-{name}")
            while True:
                held.check()
                due = await self._store.workspaces_with_due_events(self._clock())
                mine = [d.workspace_id for d in due if lease_name(d) == name]
                if not mine:
                    return
                for workspace_id in mine:
                    await self._deliver_round(held, limiter, workspace_id)
        except asyncio.CancelledError:
            raise
        except LeaseLost as exc:
            LEASES.labels("lost").inc()
            log.warning("delivery stopped: lease lost", reason=str(exc))
            held = None  # not ours to release
        except Exception:
            log.exception("delivery round failed")
            await asyncio.sleep(1.0)
        finally:
            self._workers.pop(name, None)
            if renewer is not None:
                renewer.cancel()
            if held is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(
                        self._store.release_lease(held.lease, json.dumps(limiter.usage()))
                    )
            # Events may have arrived while this task was finishing: look again now.
            self._wake.set()

    async def _deliver_round(
        self, held: HeldLease, limiter: AccountRateLimiter, workspace_id: str
    ) -> None:
        """Send one round of a workspace's due events (at most ``fetch_limit``)."""
        config = self._config
        now = self._clock()
        record = await self._store.get_integration(workspace_id)
        if record is None or not record.state.delivers:
            return
        events = await self._store.due_events(workspace_id, now, config.fetch_limit)
        if not events:
            return
        try:
            key = await self._vault.decrypt(workspace_id, record.ciphertext)
        except (VaultUnavailable, VaultDenied) as exc:
            # Delivery pauses for this workspace alone; intake carries on.
            _log.warning(
                "vault unavailable; delivery paused", workspace_id=workspace_id, error=str(exc)
            )
            await asyncio.sleep(config.vault_retry_s)
            return
        except KeyDestroyed:
            await self._store.reject_key(
                held.lease, workspace_id, record.ciphertext, _KEY_GONE, now
            )
            return
        if record.account != key.account:
            # Recorded for the next scheduling round: from then on this workspace shares
            # its account's lease and limiter.
            await self._store.set_account(workspace_id, record.ciphertext, key.account)
        try:
            if len(events) <= config.single_threshold:
                await self._send_singles(held, record, key, limiter, events)
            else:
                await self._send_bulk(held, record, key, limiter, events)
        except _KeyRejected:
            return

    def _limiter(self, lease_name: str) -> AccountRateLimiter:
        # One per lease: the workspaces of one account share it, on one replica at a time.
        limiter = self._limiters.get(lease_name)
        if limiter is None:
            limiter = self._limiters[lease_name] = AccountRateLimiter(self._config.rate_limits)
        return limiter

    # -- sending -------------------------------------------------------------------------
    async def _send_singles(
        self,
        held: HeldLease,
        record: IntegrationRecord,
        key: PrivateKey,
        limiter: AccountRateLimiter,
        events: Sequence[OutboxEvent],
    ) -> None:
        units = [[event] for event in events]
        results = await self._post(held, record, key, limiter, Endpoint.EVENTS, units)
        await self._apply(held, record, Endpoint.EVENTS, list(zip(units, results, strict=True)))

    async def _send_bulk(
        self,
        held: HeldLease,
        record: IntegrationRecord,
        key: PrivateKey,
        limiter: AccountRateLimiter,
        events: Sequence[OutboxEvent],
    ) -> None:
        jobs = plan_bulk_jobs(events, record.settings, self._clock())
        results = await self._post(held, record, key, limiter, Endpoint.BULK, jobs)
        invalid_jobs = [
            job for job, r in zip(jobs, results, strict=True) if r.outcome is Outcome.INVALID
        ]
        await self._apply(
            held,
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
            await self._send_singles(held, record, key, limiter, job)

    async def _post(
        self,
        held: HeldLease,
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
                held.check()  # a replica that lost the lease sends nothing more
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
        held: HeldLease,
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
            await self._store.mark_delivered(held.lease, ws, delivered, now)
            DELIVERED.labels(endpoint.value).inc(len(delivered))
            if record.state is IntegrationState.UNVERIFIED:
                # Klaviyo took events with this key: what the registration could not confirm.
                await self._store.set_key_state(
                    ws, record.ciphertext, IntegrationState.ACTIVE, "", now,
                    only_from=IntegrationState.UNVERIFIED,
                )  # fmt: skip
                _log.info("key confirmed by a delivery", workspace_id=ws)
        for (when, label, counts), ids in later.items():
            await self._store.mark_retry(
                held.lease, ws, ids, when, label, now, count_attempt=counts
            )
        for detail, ids in failed.items():
            await self._store.mark_failed(held.lease, ws, ids, detail, now)
            FAILED_EVENTS.labels("invalid" if detail.startswith("Klaviyo") else "expired").inc(
                len(ids)
            )
        if key_rejected is not None:
            reason = f"Klaviyo answered {key_rejected.status_code}: {key_rejected.detail}"
            await self._store.reject_key(held.lease, ws, record.ciphertext, reason, now)
            self._vault.forget(ws)
            _log.warning(
                "klaviyo rejected the key; events held",
                workspace_id=ws,
                status=key_rejected.status_code,
            )
            raise _KeyRejected
