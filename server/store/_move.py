"""The move from the embedded store to a cluster: a SQLite file into an empty PostgreSQL.

It copies integrations (key ciphertexts, settings, states, counters), the outbox (queued,
held and failed events, with their ids, attempts and schedules), the click index, the
conversion ids and the audit trail, in one transaction on the target. Run it with the forwarder stopped; the
replicas then start on ``FORWARDER_DATABASE_URL`` and deliver what was queued.
"""

from __future__ import annotations

from server.store._config import PostgresConfig, SqliteConfig
from server.store.postgres._import import import_tables
from server.store.sqlite._export import export_tables


async def move_sqlite_to_postgres(source: SqliteConfig, target: PostgresConfig) -> dict[str, int]:
    """Copy ``source`` into the empty ``target``; the rows copied per table."""
    return await import_tables(target, export_tables(source))
