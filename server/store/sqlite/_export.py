"""Reading a whole SQLite store out, for the move to PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from server.store._config import SqliteConfig
from server.store._exceptions import StoreError
from server.store._tables import TABLES
from server.store.sqlite._connection import WriteLock, connect, migrate

_CHUNK = 5000


def _chunks(cursor: sqlite3.Cursor) -> Iterator[list[tuple[Any, ...]]]:
    while rows := cursor.fetchmany(_CHUNK):
        yield rows


def export_tables(config: SqliteConfig) -> Iterator[tuple[str, Iterator[list[tuple[Any, ...]]]]]:
    """Each table's name and its rows in chunks, all read in one consistent snapshot.

    The file is brought to the latest schema first (its writers take turns through the
    write lock, so a forwarder still running on it would wait, not corrupt anything).
    """
    if not config.path.exists():
        raise StoreError(f"no SQLite store at {config.path}")
    conn = connect(config)
    try:
        lock = WriteLock(config)
        try:
            with lock:
                migrate(conn)
        finally:
            lock.close()
        conn.execute("BEGIN")  # one read snapshot for every table
        for table, columns in TABLES.items():
            cursor = conn.execute(f"SELECT {', '.join(columns)} FROM {table}")  # noqa: S608 - fixed names
            yield table, _chunks(cursor)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {config.path}: {exc}") from None
    finally:
        conn.close()
