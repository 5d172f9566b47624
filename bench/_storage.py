"""Storage ceilings: the forwarder's rows written straight into each backend's schema.

The same rows a StreamClicks batch commits (a click-index row and an outbox row per click),
into the same tables (the backend's own migrations), with the same durability (SQLite WAL
with ``synchronous=FULL``; PostgreSQL with ``fsync`` and ``synchronous_commit`` on), one
transaction per batch — and nothing else: no gRPC, no validation, no dedupe. What the disk
and the database allow; the forwarder's intake is reported as a fraction of it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from elido.forwarder.v1 import forwarder_pb2 as pb

from server.store import PostgresConfig, SqliteConfig, open_store

# (workspace_id, click_id, email, click_time, payload)
Row = tuple[str, str, str, float, bytes]


def rows_of(batches: Sequence[bytes]) -> list[list[Row]]:
    """The rows each serialized StreamClicksRequest would store (built before timing)."""
    out = []
    for raw in batches:
        request = pb.StreamClicksRequest.FromString(raw)
        out.append(
            [
                (c.workspace_id, c.click_id, c.identifiers.email, float(c.click_time.seconds),
                 c.SerializeToString())
                for c in request.clicks
            ]
        )  # fmt: skip
    return out


async def _create_schema(config: SqliteConfig | PostgresConfig) -> None:
    store = open_store(config)
    await store.open()  # the backend's own migrations: the same tables and indexes
    await store.close()


def sqlite_ceiling(path: Path, batches: list[list[Row]]) -> float:
    """Rows/s (clicks/s) inserted into a fresh SQLite store, one transaction per batch."""
    config = SqliteConfig(path)
    asyncio.run(_create_schema(config))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    now = time.time()
    started = time.perf_counter()
    for batch in batches:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO clicks VALUES (?, ?, ?, '', '', '', ?, ?)",
            [(ws, cid, email, t, now + 86400) for ws, cid, email, t, _ in batch],
        )
        conn.executemany(
            """INSERT INTO outbox (workspace_id, kind, source_id, occurred_at, created_at, email,
                   phone_number, external_id, kx, payload, currency, next_attempt_at)
               VALUES (?, 'click', ?, ?, ?, ?, '', '', '', ?, '', ?)""",
            [(ws, cid, t, now, email, body, now) for ws, cid, email, t, body in batch],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return sum(len(b) for b in batches) / elapsed


async def _postgres_ceiling(url: str, batches: list[list[Row]], streams: int) -> float:
    await _create_schema(PostgresConfig(url))
    now = time.time()

    async def stream(share: list[list[Row]]) -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            for batch in share:
                async with conn.transaction(), conn.cursor() as cur:
                    async with cur.copy(
                        "COPY clicks (workspace_id, click_id, email, phone_number, external_id,"
                        " kx, click_time, expires_at) FROM STDIN"
                    ) as copy:
                        for ws, cid, email, t, _ in batch:
                            await copy.write_row((ws, cid, email, "", "", "", t, now + 86400))
                    async with cur.copy(
                        "COPY outbox (workspace_id, kind, source_id, occurred_at, created_at,"
                        " email, phone_number, external_id, kx, payload, next_attempt_at)"
                        " FROM STDIN"
                    ) as copy:
                        for ws, cid, email, t, body in batch:
                            row: tuple[Any, ...] = (
                                ws,
                                "click",
                                cid,
                                t,
                                now,
                                email,
                                "",
                                "",
                                "",
                                body,
                                now,
                            )
                            await copy.write_row(row)

    started = time.perf_counter()
    await asyncio.gather(*(stream(batches[i::streams]) for i in range(streams)))
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def postgres_ceiling(url: str, batches: list[list[Row]], streams: int) -> float:
    """Rows/s (clicks/s) COPYed into a fresh PostgreSQL store over ``streams`` connections."""
    return asyncio.run(_postgres_ceiling(url, batches, streams))
