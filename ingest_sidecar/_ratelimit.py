"""Rate-limited logging of bad input: a flood of garbage must not become a flood of logs."""

from __future__ import annotations

import time
from typing import Any

import structlog


class LogLimiter:
    """Allows ``per_minute`` log lines per reason; reports how many were suppressed."""

    def __init__(self, per_minute: int, logger_name: str) -> None:
        self._rate = max(per_minute, 1) / 60.0
        self._burst = float(max(per_minute, 1))
        self._buckets: dict[str, tuple[float, float, int]] = {}
        self._log = structlog.get_logger(logger_name)

    def warning(self, event: str, reason: str, **fields: Any) -> None:
        """Logs ``event`` unless ``reason`` is over its budget."""
        now = time.monotonic()
        tokens, last, suppressed = self._buckets.get(reason, (self._burst, now, 0))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens < 1.0:
            self._buckets[reason] = (tokens, now, suppressed + 1)
            return
        self._buckets[reason] = (tokens - 1.0, now, 0)
        if suppressed:
            fields["suppressed_since_last"] = suppressed
        self._log.warning(event, reason=reason, **fields)
