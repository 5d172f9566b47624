"""Persistence: integrations, the delivery outbox, the click index and delivery leases.

The rest of the server sees only :class:`Store` (and :class:`ClickWriter` for the intake
worker processes) and the records they exchange; :func:`open_store` picks the backend from
the configuration's type. Each backend's driver is imported only inside its own package.
"""

from __future__ import annotations

from server.store._config import PostgresConfig, SqliteConfig, StoreConfig, is_postgres_url
from server.store._exceptions import LeaseLost, StoreError
from server.store._interface import ClickWriter, Store


def open_store(config: StoreConfig) -> Store:
    """The store for ``config`` (not yet opened: call ``await store.open()``)."""
    # Imported here, so that only the chosen backend's driver is ever loaded.
    if isinstance(config, PostgresConfig):
        from server.store.postgres import PostgresStore

        return PostgresStore(config)
    from server.store.sqlite import SqliteStore

    return SqliteStore(config)


def open_click_writer(config: StoreConfig) -> ClickWriter:
    """A synchronous click writer for another process (the intake workers), connected."""
    if isinstance(config, PostgresConfig):
        from server.store.postgres import PostgresClickWriter

        return PostgresClickWriter(config)
    from server.store.sqlite import SqliteClickWriter

    return SqliteClickWriter(config)


async def check_store(config: StoreConfig) -> list[str]:
    """Problems that would stop the store from opening, one line each (changes nothing)."""
    if isinstance(config, PostgresConfig):
        from server.store.postgres._check import check_postgres

        return await check_postgres(config)
    from server.store.sqlite._check import check_sqlite

    return check_sqlite(config)


async def move_sqlite_to_postgres(source: SqliteConfig, target: PostgresConfig) -> dict[str, int]:
    """Copy a SQLite store into an empty PostgreSQL database; the rows copied per table."""
    from server.store._move import move_sqlite_to_postgres as move

    return await move(source, target)


__all__ = [
    "ClickWriter",
    "LeaseLost",
    "PostgresConfig",
    "SqliteConfig",
    "Store",
    "StoreConfig",
    "StoreError",
    "check_store",
    "is_postgres_url",
    "move_sqlite_to_postgres",
    "open_click_writer",
    "open_store",
]
