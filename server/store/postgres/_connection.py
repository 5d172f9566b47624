"""Connection options shared by the store's pool, its listener and the workers' connections."""

from __future__ import annotations

from typing import Any

from server.store._config import PostgresConfig


def conninfo(config: PostgresConfig) -> dict[str, Any]:
    """Connection options shared by the pool and the workers' connections."""
    timeout_ms = int(config.statement_timeout_ms)
    return {
        "connect_timeout": max(1, round(config.connect_timeout_s)),
        # A stuck lock or query fails the operation (UNAVAILABLE) instead of holding it.
        "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        "application_name": "elido-forwarder",
    }
