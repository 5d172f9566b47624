"""When and how long to wait before retrying a failed call.

Only failures that say nothing was done are retried: ``UNAVAILABLE`` (the call did not reach
a server able to serve it), and any error carrying ``google.rpc.RetryInfo`` (the server says
"not now, try again after this delay"). Errors about the request itself
(``INVALID_ARGUMENT``, ``NOT_FOUND``, auth…) are final whatever their details say.
Retrying the write RPCs is safe because the server dedupes them: clicks and conversions on
their ids, a repeated registration replaces the key with the same key.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import grpc
import structlog

from client._exceptions import ForwarderError, error_from_rpc

_log = structlog.get_logger(__name__)

_T = TypeVar("_T")

# Codes that describe the request or the caller, not the moment: waiting changes nothing.
_NEVER_RETRIED: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    }
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter.

    ``max_attempts`` counts the first try (1 disables retries). Without ``RetryInfo`` the
    n-th retry waits a uniform random time in ``[0, min(max_backoff_s, initial_backoff_s *
    multiplier**n)]``, which spreads a crowd of clients out after an outage. With
    ``RetryInfo`` the wait is the server's delay plus up to ``retry_info_jitter`` of it, never
    less; a server delay above ``max_retry_info_delay_s`` is not waited for at all (the error
    is raised and carries the delay for the caller to act on).
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    retry_info_jitter: float = 0.1
    max_retry_info_delay_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be non-negative and multiplier at least 1")

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """A policy that never retries."""
        return cls(max_attempts=1)

    def is_retryable(self, error: ForwarderError, *, idempotent: bool = True) -> bool:
        """True if ``error`` says the call was not carried out and may be tried again.

        A bare ``UNAVAILABLE`` can also mean the connection dropped after the server acted, so
        non-idempotent calls are retried only when the server said so with ``RetryInfo``.
        """
        if error.code in _NEVER_RETRIED:
            return False
        if error.retry_delay is not None:
            return True
        return idempotent and error.code == grpc.StatusCode.UNAVAILABLE

    def delay_s(self, error: ForwarderError, retry_number: int, rng: random.Random) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry)."""
        if error.retry_delay is not None:
            asked = error.retry_delay.total_seconds()
            return asked + rng.uniform(0.0, asked * self.retry_info_jitter)
        cap = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**retry_number)
        return rng.uniform(0.0, cap)


class _Attempts:
    """The bookkeeping shared by the sync and async retry loops."""

    def __init__(
        self, policy: RetryPolicy, method: str, timeout_s: float | None, idempotent: bool
    ) -> None:
        self.policy = policy
        self.method = method
        self.idempotent = idempotent
        self.deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self.number = 0
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography.

    def remaining_s(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def next_delay(self, rpc_error: grpc.RpcError) -> tuple[ForwarderError, float | None]:
        """The error to raise, and the delay before the next attempt (None: raise it now)."""
        error = error_from_rpc(rpc_error, method=self.method)
        self.number += 1
        if self.number >= self.policy.max_attempts or not self.policy.is_retryable(
            error, idempotent=self.idempotent
        ):
            return error, None
        if error.retry_delay is not None and (
            error.retry_delay.total_seconds() > self.policy.max_retry_info_delay_s
        ):
            return error, None
        delay = self.policy.delay_s(error, self.number - 1, self._rng)
        remaining = self.remaining_s()
        # Sleeping past the deadline only to fail with DEADLINE_EXCEEDED would hide the real
        # error; raising it now tells the caller what went wrong.
        if remaining is not None and delay >= remaining:
            return error, None
        _log.debug(
            "forwarder_call_retry",
            method=self.method,
            code=error.code.name,
            reason=error.reason,
            attempt=self.number,
            delay_s=round(delay, 3),
        )
        return error, delay


async def call_async(
    attempt: Callable[[float | None], Awaitable[_T]],
    *,
    policy: RetryPolicy,
    method: str,
    timeout_s: float | None,
    idempotent: bool = True,
) -> _T:
    """Runs ``attempt(per_attempt_timeout_s)`` until it succeeds or must not be retried.

    ``timeout_s`` is the deadline of the whole call, retries and waits included.
    """
    attempts = _Attempts(policy, method, timeout_s, idempotent)
    while True:
        try:
            return await attempt(attempts.remaining_s())
        except grpc.RpcError as rpc_error:
            error, delay = attempts.next_delay(rpc_error)
            if delay is None:
                raise error from None
        await asyncio.sleep(delay)


def call_sync(
    attempt: Callable[[float | None], _T],
    *,
    policy: RetryPolicy,
    method: str,
    timeout_s: float | None,
    idempotent: bool = True,
) -> _T:
    """The blocking twin of :func:`call_async`."""
    attempts = _Attempts(policy, method, timeout_s, idempotent)
    while True:
        try:
            return attempt(attempts.remaining_s())
        except grpc.RpcError as rpc_error:
            error, delay = attempts.next_delay(rpc_error)
            if delay is None:
                raise error from None
        time.sleep(delay)
