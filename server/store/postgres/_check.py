"""``elido-forwarder check`` for the PostgreSQL store: reachable, recent enough, writable."""

from __future__ import annotations

from typing import Final

import psycopg

from server.store._config import PostgresConfig

MIN_VERSION: Final = 140000  # PostgreSQL 14


async def check_postgres(config: PostgresConfig) -> list[str]:
    """Problem lines (naming FORWARDER_DATABASE_URL, never its password); empty if fine."""
    where = config.redacted_url()
    try:
        async with await psycopg.AsyncConnection.connect(
            config.url, connect_timeout=max(1, round(config.connect_timeout_s)), autocommit=True
        ) as conn:
            cur = await conn.execute(
                """SELECT current_setting('server_version_num')::int,
                          has_database_privilege(current_user, current_database(), 'CREATE'),
                          to_regclass('schema_migrations') IS NOT NULL"""
            )
            row = await cur.fetchone()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [f"FORWARDER_DATABASE_URL: cannot connect to {where}: {reason}"]
    assert row is not None  # a SELECT without FROM returns one row
    version, can_create, migrated = row
    problems: list[str] = []
    if version < MIN_VERSION:
        problems.append(
            f"FORWARDER_DATABASE_URL: {where} runs PostgreSQL {version}; 14 or newer needed"
        )
    if not migrated and not can_create:
        problems.append(
            f"FORWARDER_DATABASE_URL: the user may not create the schema in {where} (needs CREATE)"
        )
    return problems
