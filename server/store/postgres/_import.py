"""Filling an empty PostgreSQL store from another store's tables (the move from SQLite)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import psycopg

from server.store._config import PostgresConfig
from server.store._exceptions import StoreError
from server.store._tables import TABLES
from server.store.postgres._store import PostgresStore


async def import_tables(
    config: PostgresConfig, tables: Iterable[tuple[str, Iterator[list[tuple[Any, ...]]]]]
) -> dict[str, int]:
    """Copy every table in, in one transaction; refuses a target that holds any data.

    Returns the rows copied per table. Nothing is written unless everything is.
    """
    store = PostgresStore(config)
    await store.open()  # brings the target to the latest schema
    await store.close()
    copied: dict[str, int] = {}
    try:
        async with (
            await psycopg.AsyncConnection.connect(config.url) as conn,
            conn.transaction(),
            conn.cursor() as cur,
        ):
            # No replica may write while the copy runs, and the emptiness checked below
            # must still hold when it commits.
            await cur.execute(f"LOCK TABLE {', '.join(TABLES)} IN EXCLUSIVE MODE")
            for table in TABLES:
                await cur.execute(f"SELECT EXISTS (SELECT 1 FROM {table})")  # noqa: S608 - fixed names
                row = await cur.fetchone()
                if row is not None and row[0]:
                    raise StoreError(
                        f"the target database is not empty (table {table} has rows); "
                        "the move fills an empty database only"
                    )
            for table, chunks in tables:
                columns = ", ".join(TABLES[table])
                count = 0
                async with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for rows in chunks:
                        for row in rows:
                            await copy.write_row(row)
                        count += len(rows)
                copied[table] = count
            # Event ids were copied as they were: new events continue after them.
            await cur.execute(
                "SELECT setval(pg_get_serial_sequence('outbox', 'event_id'),"
                " coalesce((SELECT max(event_id) FROM outbox), 0) + 1, false)"
            )
            # Likewise the audit trail: its ids keep growing with time after the move.
            await cur.execute(
                "SELECT setval(pg_get_serial_sequence('audit_events', 'audit_id'),"
                " coalesce((SELECT max(audit_id) FROM audit_events), 0) + 1, false)"
            )
    except psycopg.Error as exc:
        raise StoreError(f"postgres: {type(exc).__name__}: {exc}") from None
    return copied
