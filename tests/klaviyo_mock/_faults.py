"""Programmable faults: the next N requests, or every request for D seconds, misbehave."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FaultKind(enum.StrEnum):
    """How a request misbehaves."""

    STATUS = "status"  # a JSON error with `status` (500, 503, 504, ...)
    HTML = "html"  # a text/html page with `status` (a CDN's 403 challenge, a 400 ...)
    SLOW = "slow"  # wait `delay_s`, then answer normally
    HANG = "hang"  # never answer (until `delay_s`, default an hour, or the mock stops)
    DROP = "drop"  # close the connection without answering


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault to inject. Neither ``count`` nor ``duration_s`` means ``count=1``.

    ``account``/``endpoint`` ("events", "bulk", "profiles") narrow which requests it hits;
    None means all. Requests with an unknown key have no account and only meet global faults.
    """

    kind: FaultKind
    status: int = 503
    count: int | None = None
    duration_s: float | None = None
    delay_s: float | None = None
    account: str | None = None
    endpoint: str | None = None
    body: str | None = None


class _Active:
    __slots__ = ("expires_at", "fault", "remaining")

    def __init__(self, fault: Fault, now: float) -> None:
        self.fault = fault
        count = fault.count
        if count is None and fault.duration_s is None:
            count = 1
        self.remaining = count
        self.expires_at = None if fault.duration_s is None else now + fault.duration_s


class FaultBook:
    """The faults in force, oldest first; the first matching one hits a request."""

    def __init__(self) -> None:
        self._active: list[_Active] = []

    def add(self, fault: Fault, now: float) -> None:
        """Arms ``fault``."""
        self._active.append(_Active(fault, now))

    def clear(self) -> None:
        """Disarms every fault."""
        self._active.clear()

    def take(self, account: str | None, endpoint: str, now: float) -> Fault | None:
        """The fault that hits this request, if any (consuming one of its count)."""
        if not self._active:
            return None
        self._active = [
            a
            for a in self._active
            if (a.expires_at is None or a.expires_at > now)
            and (a.remaining is None or a.remaining > 0)
        ]
        for active in self._active:
            fault = active.fault
            if fault.account is not None and fault.account != account:
                continue
            if fault.endpoint is not None and fault.endpoint != endpoint:
                continue
            if active.remaining is not None:
                active.remaining -= 1
            return fault
        return None

    def __len__(self) -> int:
        return len(self._active)
