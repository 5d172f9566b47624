"""Connections to the SQLite file: pragmas, the writers' turn-taking lock, migrations."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from importlib import resources
from typing import Final

import structlog

from server.store._config import SqliteConfig

_log = structlog.get_logger(__name__)

# The database's clock, in POSIX seconds with millisecond precision. Every process on the
# host reads the same clock, so leases compare times from one source.
NOW: Final = "((julianday('now') - 2440587.5) * 86400.0)"


def connect(config: SqliteConfig, cache_kib: int = 32_000) -> sqlite3.Connection:
    """A connection with the store's pragmas (WAL, durability, busy timeout, bounded cache:
    ``cache_kib``, whatever the backlog)."""
    config.path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(config.path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={config.synchronous}")
    conn.execute(f"PRAGMA busy_timeout={int(config.busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    # Deleted and overwritten rows are zeroed in the file, on every connection (intake
    # workers' too): a delivered, pruned or erased event leaves no identifier in free space.
    # Erasure then checkpoints the WAL (TRUNCATE) so that no older page image survives.
    conn.execute("PRAGMA secure_delete=ON")
    return conn


class WriteLock:
    """Takes turns among the processes writing one database file.

    SQLite lets one writer in at a time and makes the others poll with growing sleeps (up
    to 100 ms); with several writing processes that polling, not the work, set the pace. A
    blocking ``flock`` on a file beside the database hands the turn over the moment it is
    free. Writers that do not take it (a manual ``sqlite3`` session) still meet SQLite's
    own lock and busy timeout.
    """

    def __init__(self, config: SqliteConfig) -> None:
        self._fd = os.open(f"{config.path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the file descriptor."""
        os.close(self._fd)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the pending migrations of ``server/store/sqlite/migrations``, each atomically."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
    )
    applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    files = sorted(
        (
            f
            for f in resources.files("server.store.sqlite.migrations").iterdir()
            if f.name.endswith(".sql")
        ),
        key=lambda f: f.name,
    )
    for f in files:
        version = int(f.name.split("_", 1)[0])
        if version in applied:
            continue
        # One script, one transaction: a migration applies whole or not at all.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{f.read_text()}\n"
                f"INSERT INTO schema_migrations VALUES ({version}, '{f.name}');\nCOMMIT;"
            )
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        _log.info("schema migration applied", migration=f.name)
