"""The mock's configuration: keys, accounts, limits (all small frozen dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

EVENTS_WRITE: Final = "events:write"
PROFILES_READ: Final = "profiles:read"
PROFILES_WRITE: Final = "profiles:write"
# What the forwarder's setup asks the user for.
DEFAULT_SCOPES: Final = frozenset({EVENTS_WRITE, PROFILES_WRITE})


@dataclass(frozen=True, slots=True)
class WindowLimit:
    """One endpoint's limits: requests in the last 1 s and in the last 60 s (sliding)."""

    burst_per_s: int
    steady_per_min: int


@dataclass(frozen=True, slots=True)
class AccountLimits:
    """An account's limits for both write endpoints (Klaviyo's documented numbers by default)."""

    events: WindowLimit = field(default_factory=lambda: WindowLimit(350, 3500))
    bulk: WindowLimit = field(default_factory=lambda: WindowLimit(10, 150))
    # Real Klaviyo has been seen answering 429 without Retry-After; False reproduces that.
    retry_after_header: bool = True


@dataclass(frozen=True, slots=True)
class KeySpec:
    """A private key the mock knows: the account it belongs to and its scopes."""

    key: str
    account: str = "acct"
    scopes: frozenset[str] = DEFAULT_SCOPES


@dataclass(frozen=True, slots=True)
class MockConfig:
    """How to run the mock."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 = a free port, read it back from KlaviyoMock.base_url.
    keys: tuple[KeySpec, ...] = ()
    limits: AccountLimits = field(default_factory=AccountLimits)
    # Requests kept with headers and body for tests (oldest dropped first); None = all.
    max_recorded_requests: int | None = 10_000
    # Keep each accepted event (timeline()/received()). False keeps only the dedupe keys and
    # the counts in stats(): for benchmarks pushing millions of events through the mock.
    record_events: bool = True
    # Serve the JSON admin API under /__mock__/ (for drivers in another process).
    admin_api: bool = True
