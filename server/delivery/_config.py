"""How the delivery engine paces, batches and retries."""

from __future__ import annotations

from dataclasses import dataclass, field

from server.delivery._ratelimit import RateLimitConfig


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, as Klaviyo's docs and official SDK recommend.

    Attempt n (from 0) waits ``min(base_s * multiplier**n, max_delay_s)`` +/- ``jitter``
    (a fraction). An event still undelivered ``max_age_s`` after it was taken in is marked
    failed (replayable) instead of retried again.
    """

    base_s: float = 0.5
    multiplier: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.5
    max_age_s: float = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """The delivery engine's knobs."""

    # False runs an intake-only replica (e.g. during a Klaviyo incident, or for benchmarks):
    # events are queued and delivered by whichever replica has delivery on.
    enabled: bool = True
    # At most this many due events are sent one by one (lowest latency); above it, Bulk
    # Create Events jobs (40x the throughput per request budget).
    single_threshold: int = 20
    # Events read from the outbox per round for one workspace.
    fetch_limit: int = 5000
    # Concurrent single-event requests per workspace.
    single_concurrency: int = 16
    # Concurrent bulk jobs per workspace (each up to 1000 events).
    bulk_concurrency: int = 4
    poll_interval_s: float = 0.5
    lease_ttl_s: float = 30.0
    # Who holds delivery leases. Stable across restarts of the same replica (the host name by
    # default), so a replica restarted after a crash takes its leases back at once instead of
    # waiting for them to expire; replicas sharing a store need distinct ids.
    instance_id: str = ""
    # Pause of a workspace's delivery after Vault could not decrypt its key.
    vault_retry_s: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
