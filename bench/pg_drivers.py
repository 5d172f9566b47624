"""PostgreSQL drivers on the forwarder's intake path: psycopg 3 against asyncpg.

Each method takes clicks in transactions, as intake will: look up which click ids already
exist (dedupe), insert the click-index rows and the outbox rows of the new clicks, and commit
durably (``fsync=on``, ``synchronous_commit=on``). Prints clicks/s (offered clicks, about 2 %
of them duplicates of earlier clicks; each new click writes two rows) for:

* batches of 500 and of 100, ``--streams`` connections writing concurrently (StreamClicks);
* one click per transaction, 64 concurrent clients on 64 connections (ForwardClick);
* a "bare" ceiling: COPY into both tables, no dedupe (what the storage does at best).

Dedupe is done two ways:

* ``select+insert``: SELECT the batch's ids that exist, then insert the rest
  (executemany in pipeline mode, or COPY). Two replicas taking the same click at once both
  miss it in the SELECT; one then fails on the primary key and must retry its whole batch.
* ``on-conflict``: one statement per batch: ``INSERT INTO clicks ... ON CONFLICT DO NOTHING
  RETURNING`` feeding the outbox INSERT in a CTE (rows passed as arrays and ``unnest``ed). The
  unique index arbitrates, so concurrent replicas never both queue a click, and there is no
  retry; it is also one round trip.

psycopg runs with its C implementation (psycopg-binary) and binary parameters (``%b``), which
spare the text escaping of bytea and arrays; one text-parameter variant shows what that buys.

It starts its own PostgreSQL exactly as the tests do (``tests.support.postgres``), in a temporary
directory, and removes it afterwards. Not a test: it asserts nothing except that every method
queued exactly the new clicks.

    .venv/bin/python bench/pg_drivers.py [--clicks 100000] [--streams 4] [--unary 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "protos")]

import asyncpg  # noqa: E402
import psycopg  # noqa: E402

from tests.support.postgres import PostgresServer  # noqa: E402

# server/store/migrations/0001_initial.sql's click index and outbox, in PostgreSQL types.
SCHEMA = """
CREATE TABLE outbox (
    event_id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workspace_id    TEXT NOT NULL,
    kind            TEXT NOT NULL,
    source_id       TEXT NOT NULL,
    occurred_at     DOUBLE PRECISION NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    email           TEXT NOT NULL,
    phone_number    TEXT NOT NULL,
    external_id     TEXT NOT NULL,
    kx              TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    value           DOUBLE PRECISION,
    currency        TEXT NOT NULL DEFAULT '',
    status          SMALLINT NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    last_error      TEXT NOT NULL DEFAULT '',
    failed_at       DOUBLE PRECISION
);
CREATE INDEX outbox_due ON outbox (workspace_id, status, next_attempt_at, event_id);
CREATE TABLE clicks (
    workspace_id TEXT NOT NULL,
    click_id     TEXT NOT NULL,
    email        TEXT NOT NULL,
    phone_number TEXT NOT NULL,
    external_id  TEXT NOT NULL,
    kx           TEXT NOT NULL,
    click_time   DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (workspace_id, click_id)
);
CREATE INDEX clicks_expiry ON clicks (expires_at);
"""

CLICK_COLUMNS = [
    "workspace_id", "click_id", "email", "phone_number", "external_id", "kx", "click_time",
    "expires_at",
]  # fmt: skip
OUTBOX_COLUMNS = [
    "workspace_id", "kind", "source_id", "occurred_at", "created_at", "email", "phone_number",
    "external_id", "kx", "payload", "next_attempt_at",
]  # fmt: skip
CLICK_TYPES = ["text"] * 6 + ["float8"] * 2
OUTBOX_TYPES = ["text"] * 3 + ["float8"] * 2 + ["text"] * 4 + ["bytea", "float8"]

# A click: (workspace_id, click_id, email, phone, external_id, kx, click_time, expires_at, payload)
Click = tuple[str, str, str, str, str, str, float, float, bytes]

SELECT_EXISTING = (
    "SELECT click_id FROM clicks WHERE workspace_id = $1 AND click_id = ANY($2::text[])"
)
INSERT_CLICK = (
    "INSERT INTO clicks (workspace_id, click_id, email, phone_number, external_id, kx, click_time, expires_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)
INSERT_OUTBOX = (
    "INSERT INTO outbox (workspace_id, kind, source_id, occurred_at, created_at, email, phone_number, external_id, kx, payload, next_attempt_at)"
    " VALUES ($1, 'click', $2, $3, $4, $5, $6, $7, $8, $9, $4)"
)
INSERT_CLICK_ON_CONFLICT = INSERT_CLICK + " ON CONFLICT DO NOTHING RETURNING click_id"
# One statement: dedupe through the unique index, then queue exactly the clicks it inserted,
# in the batch's order (event ids follow arrival order).
BATCH_ON_CONFLICT = """
WITH src AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::float8[], $8::float8[], $9::bytea[]) WITH ORDINALITY
        AS s(workspace_id, click_id, email, phone_number, external_id, kx, click_time, expires_at, payload, ord)
), ins AS (
    INSERT INTO clicks (workspace_id, click_id, email, phone_number, external_id, kx, click_time, expires_at)
    SELECT workspace_id, click_id, email, phone_number, external_id, kx, click_time, expires_at FROM src
    ON CONFLICT DO NOTHING
    RETURNING workspace_id, click_id
)
INSERT INTO outbox (workspace_id, kind, source_id, occurred_at, created_at, email, phone_number, external_id, kx, payload, next_attempt_at)
SELECT src.workspace_id, 'click', src.click_id, src.click_time, $10, src.email, src.phone_number,
       src.external_id, src.kx, src.payload, $10
FROM src JOIN ins USING (workspace_id, click_id)
ORDER BY src.ord
RETURNING source_id
"""
UNARY_ON_CONFLICT = """
WITH ins AS (
    INSERT INTO clicks (workspace_id, click_id, email, phone_number, external_id, kx, click_time, expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT DO NOTHING
    RETURNING click_id
)
INSERT INTO outbox (workspace_id, kind, source_id, occurred_at, created_at, email, phone_number, external_id, kx, payload, next_attempt_at)
SELECT $1, 'click', click_id, $7, $10, $3, $4, $5, $6, $9, $10 FROM ins
RETURNING source_id
"""


class Psy:
    """An asyncpg-style statement (``$n`` placeholders) for psycopg: ``$n`` becomes ``%b``
    (binary parameters: no text escaping of bytea and arrays) or ``%s``, and :meth:`args`
    repeats arguments a statement uses more than once."""

    def __init__(self, sql: str, binary: bool = True) -> None:
        self.order: list[int] = []

        def sub(match: re.Match[str]) -> str:
            self.order.append(int(match.group(1)) - 1)
            return "%b" if binary else "%s"

        self.sql = re.sub(r"\$(\d+)", sub, sql)

    def args(self, values: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(values[i] for i in self.order)


# -- data -------------------------------------------------------------------------------------


def make_clicks(prefix: str, count: int, batch: int, dup_rate: float) -> list[list[Click]]:
    """``count`` clicks in batches; about ``dup_rate`` of each batch repeats earlier clicks."""
    rng = random.Random(prefix)
    now = time.time()
    payload = os.urandom(200)
    seen: list[Click] = []  # clicks of earlier batches, the candidates for duplicates
    batches: list[list[Click]] = []
    n = 0
    while n < count:
        rows: list[Click] = []
        fresh: list[Click] = []
        ids: set[str] = set()
        while len(rows) < batch and n < count:
            if seen and rng.random() < dup_rate:
                click = seen[rng.randrange(len(seen))]
                if click[1] in ids:
                    continue
            else:
                click = (
                    "bench-ws", f"{prefix}-{n:09d}", f"user{n % 50_000}@example.com", "", "",
                    "", now - 10, now + 30 * 86400, payload,
                )  # fmt: skip
                fresh.append(click)
            ids.add(click[1])
            rows.append(click)
            n += 1
        seen.extend(fresh)
        batches.append(rows)
    return batches


def click_row(c: Click) -> tuple[Any, ...]:
    return c[:8]


def outbox_row(c: Click, now: float) -> tuple[Any, ...]:
    return (c[0], "click", c[1], c[6], now, c[2], c[3], c[4], c[5], c[8], now)


def outbox_params(c: Click, now: float) -> tuple[Any, ...]:
    return (c[0], c[1], c[6], now, c[2], c[3], c[4], c[5], c[8])


def columns(batch: Sequence[Click]) -> list[list[Any]]:
    return [list(col) for col in zip(*batch, strict=True)]


# -- asyncpg ----------------------------------------------------------------------------------


async def apg_select_insert(conn: asyncpg.Connection, batch: list[Click]) -> int:
    async with conn.transaction():
        existing = {
            r[0] for r in await conn.fetch(SELECT_EXISTING, batch[0][0], [c[1] for c in batch])
        }
        new = [c for c in batch if c[1] not in existing]
        now = time.time()
        await conn.executemany(INSERT_CLICK, [click_row(c) for c in new])
        await conn.executemany(INSERT_OUTBOX, [outbox_params(c, now) for c in new])
    return len(new)


async def apg_select_copy(conn: asyncpg.Connection, batch: list[Click]) -> int:
    async with conn.transaction():
        existing = {
            r[0] for r in await conn.fetch(SELECT_EXISTING, batch[0][0], [c[1] for c in batch])
        }
        new = [c for c in batch if c[1] not in existing]
        now = time.time()
        await conn.copy_records_to_table(
            "clicks", records=[click_row(c) for c in new], columns=CLICK_COLUMNS
        )
        await conn.copy_records_to_table(
            "outbox", records=[outbox_row(c, now) for c in new], columns=OUTBOX_COLUMNS
        )
    return len(new)


async def apg_on_conflict(conn: asyncpg.Connection, batch: list[Click]) -> int:
    # One statement, so autocommit (asyncpg's default outside a transaction block) is one
    # durable transaction and one round trip.
    rows = await conn.fetch(BATCH_ON_CONFLICT, *columns(batch), time.time())
    return len(rows)


async def apg_bare_copy(conn: asyncpg.Connection, batch: list[Click]) -> int:
    now = time.time()
    async with conn.transaction():
        await conn.copy_records_to_table(
            "clicks", records=[click_row(c) for c in batch], columns=CLICK_COLUMNS
        )
        await conn.copy_records_to_table(
            "outbox", records=[outbox_row(c, now) for c in batch], columns=OUTBOX_COLUMNS
        )
    return len(batch)


async def apg_unary_select_insert(conn: asyncpg.Connection, c: Click) -> int:
    async with conn.transaction():
        if await conn.fetchval(SELECT_EXISTING, c[0], [c[1]]) is not None:
            return 0
        await conn.execute(INSERT_CLICK, *click_row(c))
        await conn.execute(INSERT_OUTBOX, *outbox_params(c, time.time()))
    return 1


async def apg_unary_on_conflict(conn: asyncpg.Connection, c: Click) -> int:
    return len(await conn.fetch(UNARY_ON_CONFLICT, *click_row(c), c[8], time.time()))


async def apg_connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


# -- psycopg ----------------------------------------------------------------------------------

P_SELECT_EXISTING = Psy(SELECT_EXISTING)
P_INSERT_CLICK = Psy(INSERT_CLICK)
P_INSERT_OUTBOX = Psy(INSERT_OUTBOX)
P_INSERT_CLICK_ON_CONFLICT = Psy(INSERT_CLICK_ON_CONFLICT)
P_BATCH_ON_CONFLICT = Psy(BATCH_ON_CONFLICT)
P_BATCH_ON_CONFLICT_TEXT = Psy(BATCH_ON_CONFLICT, binary=False)
P_UNARY_ON_CONFLICT = Psy(UNARY_ON_CONFLICT)
P_OUTBOX_COPY = f"COPY outbox ({', '.join(OUTBOX_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
P_CLICKS_COPY = f"COPY clicks ({', '.join(CLICK_COLUMNS)}) FROM STDIN (FORMAT BINARY)"


async def pcopy(cur: psycopg.AsyncCursor[Any], sql: str, types: list[str], rows: Any) -> None:
    async with cur.copy(sql) as copy:
        copy.set_types(types)
        for row in rows:
            await copy.write_row(row)


async def psy_existing(cur: psycopg.AsyncCursor[Any], batch: list[Click]) -> set[str]:
    await cur.execute(
        P_SELECT_EXISTING.sql, P_SELECT_EXISTING.args([batch[0][0], [c[1] for c in batch]])
    )
    return {r[0] for r in await cur.fetchall()}


async def psy_select_insert(conn: psycopg.AsyncConnection[Any], batch: list[Click]) -> int:
    async with conn.transaction(), conn.cursor() as cur:
        existing = await psy_existing(cur, batch)
        new = [c for c in batch if c[1] not in existing]
        now = time.time()
        # executemany runs in pipeline mode (libpq >= 14): one round trip for the lot.
        await cur.executemany(P_INSERT_CLICK.sql, [P_INSERT_CLICK.args(click_row(c)) for c in new])
        await cur.executemany(
            P_INSERT_OUTBOX.sql, [P_INSERT_OUTBOX.args(outbox_params(c, now)) for c in new]
        )
    return len(new)


async def psy_select_copy(conn: psycopg.AsyncConnection[Any], batch: list[Click]) -> int:
    async with conn.transaction(), conn.cursor() as cur:
        existing = await psy_existing(cur, batch)
        new = [c for c in batch if c[1] not in existing]
        now = time.time()
        await pcopy(cur, P_CLICKS_COPY, CLICK_TYPES, (click_row(c) for c in new))
        await pcopy(cur, P_OUTBOX_COPY, OUTBOX_TYPES, (outbox_row(c, now) for c in new))
    return len(new)


async def psy_on_conflict(conn: psycopg.AsyncConnection[Any], batch: list[Click]) -> int:
    async with conn.cursor() as cur:  # autocommit: the one statement is the transaction
        statement = P_BATCH_ON_CONFLICT
        await cur.execute(statement.sql, statement.args([*columns(batch), time.time()]))
        return len(await cur.fetchall())


async def psy_on_conflict_text(conn: psycopg.AsyncConnection[Any], batch: list[Click]) -> int:
    async with conn.cursor() as cur:
        statement = P_BATCH_ON_CONFLICT_TEXT
        await cur.execute(statement.sql, statement.args([*columns(batch), time.time()]))
        return len(await cur.fetchall())


async def psy_on_conflict_many(conn: psycopg.AsyncConnection[Any], batch: list[Click]) -> int:
    """ON CONFLICT per row through executemany(returning=True) in a pipeline, then the outbox."""
    async with conn.transaction(), conn.cursor() as cur:
        statement = P_INSERT_CLICK_ON_CONFLICT
        await cur.executemany(
            statement.sql, [statement.args(click_row(c)) for c in batch], returning=True
        )
        inserted: set[str] = set()
        while True:
            row = await cur.fetchone()
            if row is not None:
                inserted.add(row[0])
            if not cur.nextset():
                break
        new = [c for c in batch if c[1] in inserted]
        now = time.time()
        await cur.executemany(
            P_INSERT_OUTBOX.sql, [P_INSERT_OUTBOX.args(outbox_params(c, now)) for c in new]
        )
    return len(new)


async def psy_bare_copy(conn: psycopg.AsyncConnection[Any], batch: list[Click]) -> int:
    now = time.time()
    async with conn.transaction(), conn.cursor() as cur:
        await pcopy(cur, P_CLICKS_COPY, CLICK_TYPES, (click_row(c) for c in batch))
        await pcopy(cur, P_OUTBOX_COPY, OUTBOX_TYPES, (outbox_row(c, now) for c in batch))
    return len(batch)


async def psy_unary_select_insert(conn: psycopg.AsyncConnection[Any], c: Click) -> int:
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(P_SELECT_EXISTING.sql, P_SELECT_EXISTING.args([c[0], [c[1]]]))
        if await cur.fetchone() is not None:
            return 0
        await cur.execute(P_INSERT_CLICK.sql, P_INSERT_CLICK.args(click_row(c)))
        await cur.execute(P_INSERT_OUTBOX.sql, P_INSERT_OUTBOX.args(outbox_params(c, time.time())))
    return 1


async def psy_unary_on_conflict(conn: psycopg.AsyncConnection[Any], c: Click) -> int:
    async with conn.cursor() as cur:
        statement = P_UNARY_ON_CONFLICT
        await cur.execute(statement.sql, statement.args([*click_row(c), c[8], time.time()]))
        return len(await cur.fetchall())


async def psy_connect(url: str) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(url, autocommit=True)


# -- harness ----------------------------------------------------------------------------------

Connect = Callable[[str], Awaitable[Any]]


def server_cpu_s(postmaster: int) -> float:
    """CPU seconds used so far by the postmaster and its live children (backends, WAL writer,
    checkpointer), from /proc."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    clicks: int
    queued: int
    elapsed_s: float
    client_cpu_s: float
    server_cpu_s: float


async def run(
    url: str,
    postmaster: int,
    connect: Connect,
    method: Callable[[Any, Any], Awaitable[int]],
    work: Sequence[Sequence[Any]],
) -> Run:
    """Each item of ``work`` on its own connection, concurrently; ``method`` per element."""
    conns = [await connect(url) for _ in work]

    async def worker(conn: Any, items: Sequence[Any]) -> int:
        return sum([await method(conn, item) for item in items])

    server_start = server_cpu_s(postmaster)
    cpu_start = time.process_time()
    start = time.perf_counter()
    queued = await asyncio.gather(*(worker(c, w) for c, w in zip(conns, work, strict=True)))
    elapsed = time.perf_counter() - start
    client_cpu = time.process_time() - cpu_start
    server_cpu = server_cpu_s(postmaster) - server_start
    for conn in conns:
        await conn.close()
    clicks = sum(len(item) if isinstance(item, list) else 1 for w in work for item in w)
    return Run(clicks, sum(queued), elapsed, client_cpu, server_cpu)


async def reset(url: str) -> None:
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE clicks, outbox RESTART IDENTITY")
    await conn.execute("CHECKPOINT")
    await conn.close()


def expected_new(streams: Sequence[Sequence[Sequence[Click]]]) -> int:
    return len({c[1] for s in streams for b in s for c in b})


async def bench(args: argparse.Namespace, server: PostgresServer) -> None:
    url = server.create_database("bench")
    conn = await asyncpg.connect(url)
    await conn.execute(SCHEMA)
    await conn.close()
    print(
        f"{server.version}, fsync=on, synchronous_commit=on; psycopg {psycopg.__version__} "
        f"({psycopg.pq.__impl__} libpq {psycopg.pq.version()}), asyncpg {asyncpg.__version__}",
        flush=True,
    )

    batch_methods: list[tuple[str, Connect, Any]] = [
        ("psycopg  select+insert (executemany, pipeline)", psy_connect, psy_select_insert),
        ("psycopg  select+COPY (binary)", psy_connect, psy_select_copy),
        ("psycopg  on-conflict (executemany returning)", psy_connect, psy_on_conflict_many),
        ("psycopg  on-conflict (unnest CTE, 1 statement)", psy_connect, psy_on_conflict),
        ("psycopg  on-conflict (unnest CTE, text params)", psy_connect, psy_on_conflict_text),
        ("asyncpg  select+insert (executemany)", apg_connect, apg_select_insert),
        ("asyncpg  select+copy_records_to_table", apg_connect, apg_select_copy),
        ("asyncpg  on-conflict (unnest CTE, 1 statement)", apg_connect, apg_on_conflict),
        ("bare     psycopg COPY, no dedupe", psy_connect, psy_bare_copy),
        ("bare     asyncpg copy_records_to_table, no dedupe", apg_connect, apg_bare_copy),
    ]
    unary_methods: list[tuple[str, Connect, Any]] = [
        ("psycopg  select+insert, 3 statements", psy_connect, psy_unary_select_insert),
        ("psycopg  on-conflict CTE, 1 statement", psy_connect, psy_unary_on_conflict),
        ("asyncpg  select+insert, 3 statements", apg_connect, apg_unary_select_insert),
        ("asyncpg  on-conflict CTE, 1 statement", apg_connect, apg_unary_on_conflict),
    ]
    clients = 64
    sections = [
        (f"batches of {size}, {args.streams} streams, {args.clicks:,} clicks", size)
        for size in (500, 100)
    ] + [(f"one click per transaction, {clients} clients, {args.unary:,} clicks", 1)]
    runs: dict[tuple[int, str], list[Run]] = {}
    # Rounds interleave the methods, so load from elsewhere on the machine spreads over all.
    for round_no in range(1, args.rounds + 1):
        print(f"\nround {round_no}/{args.rounds}", flush=True)
        for title, size in sections:
            print(f"  {title} (clicks/s):", flush=True)
            methods = unary_methods if size == 1 else batch_methods
            for label, connect, method in methods:
                bare = label.startswith("bare")
                dup_rate = 0.0 if bare else args.dup_rate
                if size == 1:
                    streams = [
                        make_clicks(f"u{round_no}-{i}", args.unary // clients, 1, dup_rate)
                        for i in range(clients)
                    ]
                else:
                    streams = [
                        make_clicks(f"s{size}-{i}", args.clicks // args.streams, size, dup_rate)
                        for i in range(args.streams)
                    ]
                await reset(url)
                work: list[list[Any]] = (
                    [[b[0] for b in s] for s in streams] if size == 1 else list(streams)
                )
                r = await run(url, server.pid, connect, method, work)
                assert r.queued == expected_new(streams), (label, r.queued, expected_new(streams))
                runs.setdefault((size, label), []).append(r)
                print(f"    {label:<52} {line(r)}", flush=True)

    print(
        f"\nsummary, median of {args.rounds} rounds (clicks/s; CPU microseconds per click in "
        "this Python process and in PostgreSQL):"
    )
    for title, size in sections:
        print(f"  {title}:")
        print(f"    {'method':<52} {'clicks/s':>10} {'best':>10} {'client':>8} {'server':>8}")
        for (s, label), results in runs.items():
            if s == size:
                rate = statistics.median(r.clicks / r.elapsed_s for r in results)
                best = max(r.clicks / r.elapsed_s for r in results)
                client = statistics.median(1e6 * r.client_cpu_s / r.clicks for r in results)
                srv = statistics.median(1e6 * r.server_cpu_s / r.clicks for r in results)
                print(f"    {label:<52} {rate:>10,.0f} {best:>10,.0f} {client:>8.1f} {srv:>8.1f}")


def line(r: Run) -> str:
    return (
        f"{r.clicks / r.elapsed_s:>10,.0f}/s  client {1e6 * r.client_cpu_s / r.clicks:6.1f} µs"
        f"  server {1e6 * r.server_cpu_s / r.clicks:6.1f} µs per click"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clicks", type=int, default=100_000, help="clicks per batch method")
    parser.add_argument("--streams", type=int, default=4, help="concurrent batch writers")
    parser.add_argument("--unary", type=int, default=20_000, help="clicks per unary method")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every method")
    parser.add_argument("--dup-rate", type=float, default=0.02, help="share of repeated clicks")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the server below is stopped and its directory removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    server = PostgresServer()
    try:
        server.start()
        asyncio.run(bench(args, server))
    finally:
        server.close()


if __name__ == "__main__":
    main()
