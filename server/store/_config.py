"""Which store to open and how: one small frozen dataclass per backend.

They live here, outside the backends' packages, so that reading the configuration never
imports a database driver: :func:`server.store.open_store` picks the backend from the type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

DEFAULT_ATTRIBUTION_WINDOW_S: Final = 90 * 86400.0


@dataclass(frozen=True, slots=True)
class SqliteConfig:
    """The embedded store: one SQLite file on this host."""

    path: Path
    # FULL fsyncs the WAL at every commit: an ack survives power loss, not only a crash.
    synchronous: str = "FULL"
    attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S
    busy_timeout_ms: int = 5000


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """A PostgreSQL database shared by any number of replicas."""

    # ``postgresql://user:password@host:port/dbname?...``; holds a password, so it is never
    # logged or shown (repr shows :meth:`redacted_url`).
    url: str = field(repr=False)
    pool_size: int = 10
    attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S
    connect_timeout_s: float = 5.0
    # How long a statement may wait for a lock or run before the operation fails (and the
    # caller answers UNAVAILABLE): a stuck database must not hold intake calls forever.
    statement_timeout_ms: int = 15000

    def redacted_url(self) -> str:
        """The URL without its password, for logs."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()

    def __repr__(self) -> str:
        return (
            f"PostgresConfig(url={self.redacted_url()!r}, pool_size={self.pool_size}, "
            f"attribution_window_s={self.attribution_window_s})"
        )


StoreConfig = SqliteConfig | PostgresConfig


def is_postgres_url(url: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return urlsplit(url).scheme in ("postgresql", "postgres")
