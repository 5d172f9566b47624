"""PostgreSQL implementation of :class:`server.store.Store` (psycopg 3, a connection pool).

Any number of replicas share one database. What makes them agree:

- **Intake reads the batch's integrations ``FOR SHARE`` in its own transaction.** A removal
  (which deletes the integration row, then its outbox rows) waits for intake transactions
  that saw the integration and then deletes what they queued; intake transactions that start
  after it see no integration. So once ``RemoveIntegration`` returned on one replica, no
  replica queues that workspace's clicks, and nothing it queued before survives.
- **The click index's primary key decides duplicates**: ``INSERT … ON CONFLICT DO NOTHING
  RETURNING`` tells which clicks this batch indexed, so two replicas taking the same click at
  once queue it once, without retries.
- **Leases live on the database's clock** (``clock_timestamp()``), and every delivery write
  first checks, under a row lock, that its lease still carries the writer's token.
- **Wake-ups cross replicas** through ``LISTEN/NOTIFY``: an intake transaction that queued
  events notifies ``forwarder_due`` on commit, and every replica's delivery looks at once.

An ack is a durable commit: ``synchronous_commit`` is raised to ``on`` on every connection
where the server's default would have lowered it to ``off``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from importlib import resources
from typing import Any, Final

import psycopg
import structlog
from psycopg_pool import AsyncConnectionPool

from server.store._codec import properties_to_json, settings_from_json, settings_to_json
from server.store._config import PostgresConfig
from server.store._exceptions import LeaseLost, StoreError
from server.store._records import (
    AuditEntry,
    AuditRecord,
    ClickOutcome,
    ConversionOutcome,
    DeliveryCounters,
    DueWorkspace,
    ErasureCounts,
    ErasureTargets,
    EventKind,
    FailedEventRecord,
    FailedSelection,
    Identifiers,
    IntegrationRecord,
    IntegrationSettings,
    IntegrationState,
    Lease,
    LeaseHandover,
    NewClick,
    NewConversion,
    OutboxEvent,
)
from server.store._rules import ascii_lower, decide_conversion
from server.store._rules import audit_where as _audit_where
from server.store._settings import SettingsCache
from server.store.postgres._connection import conninfo
from server.store.postgres._intake import (
    CHANNEL,
    DEADLOCK_RETRIES,
    Outcome,
    Rows,
    click_statements,
)

_log = structlog.get_logger(__name__)

QUEUED: Final = 0
FAILED: Final = 1
# The database's clock in POSIX seconds.
NOW: Final = "extract(epoch from clock_timestamp())::float8"
# Serialises schema migrations among replicas starting at once.
_MIGRATION_LOCK: Final = 0x656C69646F  # "elido"

_INSERT_OUTBOX: Final = """INSERT INTO outbox (workspace_id, kind, source_id, occurred_at,
        created_at, email, phone_number, external_id, kx, payload, value, currency, next_attempt_at)
    VALUES (%b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b)"""
_FENCE: Final = "SELECT 1 FROM leases WHERE name = %b AND owner = %b AND token = %b FOR SHARE"


_INTEGRATION: Final = """SELECT workspace_id, ciphertext, key_fingerprint, key_version, settings,
    state, state_reason, created_at, updated_at, account FROM integrations"""


def _integration(row: tuple[Any, ...]) -> IntegrationRecord:
    return IntegrationRecord(
        workspace_id=row[0],
        ciphertext=row[1],
        key_fingerprint=row[2],
        key_version=row[3],
        settings=settings_from_json(row[4]),
        state=IntegrationState(row[5]),
        state_reason=row[6],
        created_at=row[7],
        updated_at=row[8],
        account=row[9],
    )


def _failed_where(workspace_id: str, sel: FailedSelection) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (and its values) of a workspace's failed events matching ``sel``."""
    clauses = ["workspace_id = %s", "status = %s"]
    params: list[Any] = [workspace_id, FAILED]
    if sel.failed_after is not None:
        clauses.append("coalesce(failed_at, created_at) >= %s")
        params.append(sel.failed_after)
    if sel.failed_before is not None:
        clauses.append("coalesce(failed_at, created_at) < %s")
        params.append(sel.failed_before)
    if sel.error_contains:
        clauses.append('strpos(lower(last_error COLLATE "C"), %s) > 0')
        params.append(ascii_lower(sel.error_contains))
    if sel.kind is not None:
        clauses.append("kind = %s")
        params.append(sel.kind.value)
    if sel.event_ids is not None:
        clauses.append("event_id = ANY(%s::bigint[])")
        params.append(list(sel.event_ids))
    return " AND ".join(clauses), tuple(params)


def _erasure_match(targets: ErasureTargets) -> tuple[str, tuple[Any, ...]]:
    """A condition true for rows carrying any of the identifiers (emails ignoring ASCII case,
    as SQLite's NOCASE does: ``lower`` under the "C" collation folds only A-Z)."""
    clauses: list[str] = []
    params: list[Any] = []
    if targets.emails:
        clauses.append('lower(email COLLATE "C") = ANY(%s::text[])')
        params.append([ascii_lower(e) for e in targets.emails])
    for column, values in (
        ("phone_number", targets.phone_numbers),
        ("external_id", targets.external_ids),
        ("kx", targets.kxs),
    ):
        if values:
            clauses.append(f"{column} = ANY(%s::text[])")
            params.append(list(values))
    return " OR ".join(clauses), tuple(params)


class PostgresStore:
    """The store on a PostgreSQL database shared by any number of replicas."""

    def __init__(self, config: PostgresConfig) -> None:
        self._config = config
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._settings = SettingsCache()
        self._listeners: list[Callable[[], None]] = []
        self._listen_task: asyncio.Task[None] | None = None

    # -- connections -----------------------------------------------------------------------
    def _conninfo(self) -> dict[str, Any]:
        return conninfo(self._config)

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
        # An ack must mean a durable commit: never let a server default of "off" weaken it
        # (local, remote_write, remote_apply and on all wait at least for the local flush).
        row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
        if row is not None and row[0] == "off":
            await conn.execute("SET synchronous_commit TO on")
        await conn.commit()

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncCursor[Any]]:
        """A cursor inside one transaction; database failures become :class:`StoreError`."""
        if self._pool is None:
            raise StoreError("store is not open")
        try:
            async with (
                self._pool.connection() as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                yield cur
        except LeaseLost:
            raise
        except psycopg.Error as exc:
            # The message names the failure (connection refused, timeout, disk full); it
            # carries no parameter values, so no identifier or ciphertext leaks into logs.
            raise StoreError(f"postgres: {type(exc).__name__}: {exc}".strip()) from exc

    async def open(self) -> None:
        self._pool = AsyncConnectionPool(
            self._config.url,
            min_size=1,
            max_size=self._config.pool_size,
            kwargs=self._conninfo(),
            configure=self._configure,
            timeout=self._config.connect_timeout_s,
            open=False,
            name="forwarder-store",
        )
        try:
            await self._pool.open(wait=True, timeout=self._config.connect_timeout_s)
        except Exception as exc:
            await self._pool.close()
            self._pool = None
            raise StoreError(
                f"cannot connect to {self._config.redacted_url()}: {type(exc).__name__}"
            ) from None
        await self._migrate()
        async with self._transaction() as cur:
            await cur.execute("SELECT workspace_id, settings FROM integrations")
            for workspace_id, text in await cur.fetchall():
                self._settings.set(workspace_id, settings_from_json(text))

    async def _migrate(self) -> None:
        files = sorted(
            (
                f
                for f in resources.files("server.store.postgres.migrations").iterdir()
                if f.name.endswith(".sql")
            ),
            key=lambda f: f.name,
        )
        async with self._transaction() as cur:
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
            )
            await cur.execute("SELECT version FROM schema_migrations")
            applied = {row[0] for row in await cur.fetchall()}
            # One transaction for all: a migration applies whole or not at all, and replicas
            # starting together wait on the lock instead of racing.
            for f in files:
                version = int(f.name.split("_", 1)[0])
                if version in applied:
                    continue
                await cur.execute(f.read_text())
                await cur.execute(
                    "INSERT INTO schema_migrations VALUES (%s, %s)", (version, f.name)
                )
                _log.info("schema migration applied", migration=f.name)

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
            self._listen_task = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._listeners.append(wake)
        if self._listen_task is None:
            self._listen_task = asyncio.create_task(self._listen(), name="store-listen")

    async def _listen(self) -> None:
        """Wake the subscribers on every notification; reconnect while the database is away."""
        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._config.url, autocommit=True, **self._conninfo()
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    delay = 0.2
                    for wake in self._listeners:
                        wake()  # anything queued while we were not listening
                    async for _ in conn.notifies():
                        for wake in self._listeners:
                            wake()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _log.warning("store notifications interrupted", error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- integrations ----------------------------------------------------------------------
    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        return self._settings.get(workspace_id)

    async def load_settings(self, workspace_ids: Collection[str]) -> None:
        unknown = self._settings.unknown(workspace_ids)
        if not unknown:
            return
        async with self._transaction() as cur:
            await cur.execute(
                "SELECT workspace_id, settings FROM integrations WHERE workspace_id = ANY(%s)",
                (unknown,),
            )
            found = {ws: settings_from_json(text) for ws, text in await cur.fetchall()}
        self._settings.learn(unknown, found)

    async def upsert_integration(
        self,
        workspace_id: str,
        ciphertext: str,
        key_fingerprint: str,
        key_version: int,
        account: str,
        settings: IntegrationSettings,
        now: float,
        state: IntegrationState = IntegrationState.ACTIVE,
        state_reason: str = "",
    ) -> tuple[IntegrationRecord, bool]:
        async with self._transaction() as cur:
            await cur.execute(
                "SELECT 1 FROM integrations WHERE workspace_id = %s FOR UPDATE", (workspace_id,)
            )
            existed = await cur.fetchone() is not None
            await cur.execute(
                """INSERT INTO integrations (workspace_id, ciphertext, key_fingerprint, key_version,
                       settings, state, state_reason, created_at, updated_at, account)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   ON CONFLICT (workspace_id) DO UPDATE SET ciphertext = excluded.ciphertext,
                       key_fingerprint = excluded.key_fingerprint, key_version = excluded.key_version,
                       settings = excluded.settings, state = excluded.state,
                       state_reason = excluded.state_reason,
                       updated_at = excluded.updated_at, account = excluded.account""",
                (workspace_id, ciphertext, key_fingerprint, key_version, settings_to_json(settings),
                 state.value, state_reason, now, now, account),
            )  # fmt: skip
            # Events held while the old key was rejected are due again with the new key.
            await cur.execute(
                "UPDATE outbox SET next_attempt_at = %s WHERE workspace_id = %s AND status = %s AND next_attempt_at > %s",
                (now, workspace_id, QUEUED, now),
            )
            await cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
            await cur.execute(_INTEGRATION + " WHERE workspace_id = %s", (workspace_id,))
            row = await cur.fetchone()
        assert row is not None  # written just above, in this transaction
        self._settings.set(workspace_id, settings)
        return _integration(row), existed

    async def set_key_state(
        self,
        workspace_id: str,
        ciphertext: str,
        state: IntegrationState,
        reason: str,
        now: float,
        only_from: IntegrationState | None = None,
    ) -> bool:
        sql = """UPDATE integrations SET state = %s, state_reason = %s, updated_at = %s
                 WHERE workspace_id = %s AND ciphertext = %s"""
        params: tuple[object, ...] = (state.value, reason, now, workspace_id, ciphertext)
        if only_from is not None:
            sql += " AND state = %s"
            params += (only_from.value,)
        async with self._transaction() as cur:
            await cur.execute(sql, params)
            if cur.rowcount != 1:
                return False
            if state.delivers:
                # Events held under a rejected key are due again; other replicas look now.
                await cur.execute(
                    "UPDATE outbox SET next_attempt_at = %s WHERE workspace_id = %s AND status = %s AND next_attempt_at > %s",
                    (now, workspace_id, QUEUED, now),
                )
                await cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return True

    async def get_integration(self, workspace_id: str) -> IntegrationRecord | None:
        async with self._transaction() as cur:
            await cur.execute(_INTEGRATION + " WHERE workspace_id = %s", (workspace_id,))
            row = await cur.fetchone()
        return None if row is None else _integration(row)

    async def list_integrations(self, after: str, limit: int) -> list[IntegrationRecord]:
        async with self._transaction() as cur:
            await cur.execute(
                _INTEGRATION + " WHERE workspace_id > %s ORDER BY workspace_id LIMIT %s",
                (after, limit),
            )
            rows = await cur.fetchall()
        return [_integration(r) for r in rows]

    async def delete_integration(self, workspace_id: str) -> int | None:
        async with self._transaction() as cur:
            # Waits for intake transactions holding the row FOR SHARE, so what they queued
            # is committed before the outbox rows are deleted below.
            await cur.execute("DELETE FROM integrations WHERE workspace_id = %s", (workspace_id,))
            if cur.rowcount == 0:
                return None
            await cur.execute("DELETE FROM outbox WHERE workspace_id = %s", (workspace_id,))
            dropped = cur.rowcount
        self._settings.forget(workspace_id)
        return int(dropped)

    async def replace_ciphertext(
        self, workspace_id: str, old: str, new: str, key_version: int, now: float
    ) -> bool:
        async with self._transaction() as cur:
            await cur.execute(
                """UPDATE integrations SET ciphertext = %s, key_version = %s, updated_at = %s
                   WHERE workspace_id = %s AND ciphertext = %s""",
                (new, key_version, now, workspace_id, old),
            )
            return cur.rowcount == 1

    async def set_account(self, workspace_id: str, ciphertext: str, account: str) -> None:
        async with self._transaction() as cur:
            await cur.execute(
                "UPDATE integrations SET account = %s WHERE workspace_id = %s AND ciphertext = %s",
                (account, workspace_id, ciphertext),
            )

    async def delivery_counters(self, workspace_id: str) -> DeliveryCounters:
        async with self._transaction() as cur:
            await cur.execute(
                "SELECT status, count(*) FROM outbox WHERE workspace_id = %s GROUP BY status",
                (workspace_id,),
            )
            counts = dict.fromkeys((QUEUED, FAILED), 0)
            for status, count in await cur.fetchall():
                counts[status] = count
            await cur.execute(
                """SELECT delivered_count, anonymous_count, last_delivery_at, last_error, last_error_at
                   FROM integrations WHERE workspace_id = %s""",
                (workspace_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return DeliveryCounters(queued=counts[QUEUED], failed=counts[FAILED])
        delivered, anonymous, last_delivery_at, last_error, last_error_at = row
        return DeliveryCounters(
            queued=counts[QUEUED],
            delivered=delivered,
            failed=counts[FAILED],
            anonymous_clicks=anonymous,
            last_delivery_at=last_delivery_at,
            last_error=last_error,
            last_error_at=last_error_at,
        )

    # -- intake ----------------------------------------------------------------------------
    async def take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                return await self._take_clicks(clicks, now)
            except StoreError as exc:
                # Index rows are inserted in key order, so concurrent batches cannot wait on
                # each other in a cycle; should the database still pick this transaction as
                # a deadlock victim, nothing of it was committed and it is simply run again.
                if not isinstance(exc.__cause__, psycopg.errors.DeadlockDetected) or (
                    attempt == DEADLOCK_RETRIES
                ):
                    raise
                _log.warning("intake transaction retried after a deadlock", attempt=attempt)
        raise AssertionError("unreachable")

    async def _take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        steps = click_statements(clicks, now, now + self._config.attribution_window_s)
        async with self._transaction() as cur:
            try:
                sql, params = next(steps)
                while True:
                    await cur.execute(sql, params)
                    rows: Rows = await cur.fetchall() if cur.description else []
                    sql, params = steps.send(rows)
            except StopIteration as done:
                result: Outcome = done.value
        outcomes, found = result
        self._settings.learn({c.workspace_id for c in clicks}, found)
        return outcomes

    async def take_conversion(self, conversion: NewConversion, now: float) -> ConversionOutcome:
        ws = conversion.workspace_id
        expires = now + self._config.attribution_window_s
        async with self._transaction() as cur:
            await cur.execute("SELECT 1 FROM integrations WHERE workspace_id = %s FOR SHARE", (ws,))
            integrated = await cur.fetchone() is not None
            seen = False
            clicked_by: Identifiers | None = None
            if integrated:
                await cur.execute(
                    "SELECT 1 FROM conversions WHERE workspace_id = %s AND conversion_id = %s",
                    (ws, conversion.conversion_id),
                )
                seen = await cur.fetchone() is not None
            if integrated and not seen and conversion.click_id:
                await cur.execute(
                    "SELECT email, phone_number, external_id, kx FROM clicks WHERE workspace_id = %s AND click_id = %s",
                    (ws, conversion.click_id),
                )
                row = await cur.fetchone()
                clicked_by = None if row is None else Identifiers(*row)
            decision = decide_conversion(conversion, integrated, seen, clicked_by)
            if decision.record:
                await cur.execute(
                    """INSERT INTO conversions VALUES (%s, %s, %s)
                       ON CONFLICT DO NOTHING RETURNING conversion_id""",
                    (ws, conversion.conversion_id, expires),
                )
                if await cur.fetchone() is None:
                    # Another replica took the same conversion a moment ago.
                    return ConversionOutcome.DUPLICATE
            if decision.outcome is ConversionOutcome.QUEUED:
                who = decision.identifiers
                await cur.execute(
                    _INSERT_OUTBOX,
                    (ws, EventKind.CONVERSION.value, conversion.conversion_id,
                     conversion.conversion_time, now, who.email, who.phone_number,
                     who.external_id, who.kx, properties_to_json(conversion.properties),
                     conversion.value, conversion.currency, now),
                )  # fmt: skip
                await cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return decision.outcome

    # -- leases ----------------------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        async with self._transaction() as cur:
            await cur.execute(
                f"""SELECT usage, token, {NOW} - usage_at, expires_at - {NOW} FROM leases
                   WHERE name = %s FOR UPDATE""",  # noqa: S608 - NOW is a constant expression
                (name,),
            )
            before = await cur.fetchone()
            await cur.execute(
                f"""INSERT INTO leases (name, owner, token, expires_at) VALUES (%s, %s, 1, {NOW} + %s)
                   ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                       token = leases.token + 1, expires_at = excluded.expires_at
                   WHERE leases.owner = excluded.owner OR leases.expires_at < {NOW}
                   RETURNING token, expires_at""",  # noqa: S608 - NOW is a constant expression
                (name, owner, ttl_s),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        handover = None
        if before is not None:
            handover = LeaseHandover(before[0], before[1], before[2] or 0.0, before[3])
        return Lease(name, owner, row[0], row[1], ttl_s, handover)

    async def renew_lease(self, lease: Lease, usage: str = "") -> Lease | None:
        async with self._transaction() as cur:
            await cur.execute(
                f"""UPDATE leases SET expires_at = {NOW} + %s, usage = %s, usage_at = {NOW}
                   WHERE name = %s AND owner = %s AND token = %s RETURNING expires_at""",  # noqa: S608 - NOW is a constant expression
                (lease.ttl_s, usage, lease.name, lease.owner, lease.token),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return Lease(lease.name, lease.owner, lease.token, row[0], lease.ttl_s)

    async def release_lease(self, lease: Lease, usage: str = "") -> None:
        async with self._transaction() as cur:
            # Expire rather than delete: the token must keep growing across holders.
            await cur.execute(
                f"""UPDATE leases SET expires_at = 0, usage = %s, usage_at = {NOW}
                   WHERE name = %s AND owner = %s AND token = %s""",  # noqa: S608 - NOW is a constant expression
                (usage, lease.name, lease.owner, lease.token),
            )

    @staticmethod
    async def _fence(cur: psycopg.AsyncCursor[Any], lease: Lease) -> None:
        # FOR SHARE: a competing acquire waits for this transaction, so the write below is
        # committed under the lease or not at all.
        await cur.execute(_FENCE, (lease.name, lease.owner, lease.token))
        if await cur.fetchone() is None:
            raise LeaseLost(f"lease {lease.name} changed hands")

    # -- delivery --------------------------------------------------------------------------
    async def workspaces_with_due_events(self, now: float) -> list[DueWorkspace]:
        async with self._transaction() as cur:
            await cur.execute(
                """SELECT workspace_id, account FROM integrations i WHERE state IN (%s, %s)
                       AND EXISTS (SELECT 1 FROM outbox o WHERE o.workspace_id = i.workspace_id
                       AND o.status = %s AND o.next_attempt_at <= %s)""",
                (IntegrationState.ACTIVE.value, IntegrationState.UNVERIFIED.value, QUEUED, now),
            )
            rows = await cur.fetchall()
        return [DueWorkspace(r[0], r[1]) for r in rows]

    async def due_events(self, workspace_id: str, now: float, limit: int) -> list[OutboxEvent]:
        async with self._transaction() as cur:
            await cur.execute(
                """SELECT event_id, kind, source_id, occurred_at, created_at, payload,
                          value, currency, attempts, email, phone_number, external_id, kx
                   FROM outbox WHERE workspace_id = %s AND status = %s AND next_attempt_at <= %s
                   ORDER BY next_attempt_at, event_id LIMIT %s""",
                (workspace_id, QUEUED, now, limit),
                binary=True,
            )
            rows = await cur.fetchall()
        return [
            OutboxEvent(
                event_id=r[0],
                workspace_id=workspace_id,
                kind=EventKind(r[1]),
                source_id=r[2],
                occurred_at=r[3],
                created_at=r[4],
                identifiers=Identifiers(r[9], r[10], r[11], r[12]),
                payload=bytes(r[5]),
                value=r[6],
                currency=r[7],
                attempts=r[8],
            )
            for r in rows
        ]

    async def mark_delivered(
        self, lease: Lease, workspace_id: str, event_ids: Sequence[int], now: float
    ) -> None:
        async with self._transaction() as cur:
            await self._fence(cur, lease)
            await cur.execute(
                "DELETE FROM outbox WHERE workspace_id = %b AND event_id = ANY(%b::bigint[])",
                (workspace_id, list(event_ids)),
            )
            await cur.execute(
                """UPDATE integrations SET delivered_count = delivered_count + %s,
                       last_delivery_at = %s WHERE workspace_id = %s""",
                (cur.rowcount, now, workspace_id),
            )

    async def mark_retry(
        self,
        lease: Lease,
        workspace_id: str,
        event_ids: Sequence[int],
        next_attempt_at: float,
        error: str,
        now: float,
        count_attempt: bool = True,
    ) -> None:
        async with self._transaction() as cur:
            await self._fence(cur, lease)
            await cur.execute(
                """UPDATE outbox SET attempts = attempts + %b, next_attempt_at = %b, last_error = %b
                   WHERE workspace_id = %b AND event_id = ANY(%b::bigint[])""",
                (1 if count_attempt else 0, next_attempt_at, error, workspace_id, list(event_ids)),
            )
            await self._note_error(cur, workspace_id, error, now)

    async def mark_failed(
        self, lease: Lease, workspace_id: str, event_ids: Sequence[int], error: str, now: float
    ) -> None:
        async with self._transaction() as cur:
            await self._fence(cur, lease)
            await cur.execute(
                """UPDATE outbox SET status = %b, attempts = attempts + 1, last_error = %b,
                       failed_at = %b
                   WHERE workspace_id = %b AND event_id = ANY(%b::bigint[])""",
                (FAILED, error, now, workspace_id, list(event_ids)),
            )
            await self._note_error(cur, workspace_id, error, now)

    @staticmethod
    async def _note_error(
        cur: psycopg.AsyncCursor[Any], workspace_id: str, error: str, now: float
    ) -> None:
        await cur.execute(
            "UPDATE integrations SET last_error = %s, last_error_at = %s WHERE workspace_id = %s",
            (error, now, workspace_id),
        )

    async def reject_key(
        self, lease: Lease, workspace_id: str, ciphertext: str, reason: str, now: float
    ) -> bool:
        async with self._transaction() as cur:
            await self._fence(cur, lease)
            await cur.execute(
                """UPDATE integrations SET state = %s, state_reason = %s, last_error = %s,
                       last_error_at = %s WHERE workspace_id = %s AND ciphertext = %s""",
                (IntegrationState.KEY_REJECTED.value, reason, reason, now, workspace_id,
                 ciphertext),
            )  # fmt: skip
            return cur.rowcount == 1

    # -- failed events ---------------------------------------------------------------------
    async def list_failed(
        self, workspace_id: str, after_event_id: int, limit: int
    ) -> list[FailedEventRecord]:
        async with self._transaction() as cur:
            await cur.execute(
                """SELECT event_id, kind, source_id, attempts, last_error, created_at, failed_at
                   FROM outbox WHERE workspace_id = %s AND status = %s AND event_id > %s
                   ORDER BY event_id LIMIT %s""",
                (workspace_id, FAILED, after_event_id, limit),
            )
            rows = await cur.fetchall()
        return [
            FailedEventRecord(
                r[0], workspace_id, EventKind(r[1]), r[2], r[3], r[4], r[5], r[6] or r[5]
            )
            for r in rows
        ]

    async def replay_failed(
        self,
        workspace_id: str,
        event_ids: Sequence[int] | None,
        now: float,
        *,
        selection: FailedSelection | None = None,
        dry_run: bool = False,
    ) -> int:
        where, params = _failed_where(workspace_id, selection or FailedSelection())
        if event_ids is not None:
            where += " AND event_id = ANY(%s::bigint[])"
            params = (*params, list(event_ids))
        async with self._transaction() as cur:
            if dry_run:
                await cur.execute(f"SELECT count(*) FROM outbox WHERE {where}", params)  # noqa: S608 - fixed clauses, values bound
                row = await cur.fetchone()
                return int(row[0]) if row else 0
            await cur.execute(
                f"""UPDATE outbox SET status = %s, attempts = 0, next_attempt_at = %s,
                        failed_at = NULL WHERE {where}""",  # noqa: S608 - fixed clauses, values bound
                (QUEUED, now, *params),
            )
            replayed = cur.rowcount
            if replayed:
                await cur.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
        return int(replayed)

    # -- erasure ---------------------------------------------------------------------------
    async def erase_identifiers(
        self, workspace_id: str | None, targets: ErasureTargets
    ) -> ErasureCounts:
        match, params = _erasure_match(targets)
        scope, scope_params = (
            ("workspace_id = %s AND ", (workspace_id,)) if workspace_id else ("", ())
        )
        async with self._transaction() as cur:
            await cur.execute(
                f"DELETE FROM clicks WHERE {scope}({match})",  # noqa: S608 - fixed clauses, values bound
                (*scope_params, *params),
            )
            clicks = cur.rowcount
            counts = {}
            for status in (QUEUED, FAILED):
                await cur.execute(
                    f"DELETE FROM outbox WHERE {scope}status = %s AND ({match})",  # noqa: S608 - fixed clauses, values bound
                    (*scope_params, status, *params),
                )
                counts[status] = cur.rowcount
        await self._vacuum(("clicks", "outbox"))
        return ErasureCounts(int(clicks), int(counts[QUEUED]), int(counts[FAILED]))

    async def _vacuum(self, tables: Sequence[str]) -> None:
        """A plain VACUUM of ``tables`` (best effort): the erased rows' dead tuples are
        removed from heap and index pages now rather than whenever autovacuum comes by.
        Not VACUUM FULL, which would lock intake out for the whole rewrite."""
        try:
            async with await psycopg.AsyncConnection.connect(
                self._config.url, autocommit=True, **self._conninfo()
            ) as conn:
                await conn.execute(f"VACUUM {', '.join(tables)}")
        except psycopg.Error as exc:
            _log.warning("vacuum after erasure failed", error=type(exc).__name__)

    # -- audit trail -----------------------------------------------------------------------
    async def record_audit(self, entry: AuditEntry) -> int:
        async with self._transaction() as cur:
            await cur.execute(
                """INSERT INTO audit_events (occurred_at, action, workspace_id, actor, roles,
                       client_identity, details, outcome)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING audit_id""",
                (entry.occurred_at, entry.action, entry.workspace_id, entry.actor, entry.roles,
                 entry.client_identity, entry.details, entry.outcome),
            )  # fmt: skip
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def list_audit(
        self,
        workspace_id: str | None,
        since: float | None,
        until: float | None,
        before_id: int | None,
        limit: int,
    ) -> list[AuditRecord]:
        clauses, params = _audit_where(workspace_id, since, until, before_id, "%s")
        async with self._transaction() as cur:
            await cur.execute(
                f"""SELECT audit_id, occurred_at, action, workspace_id, actor, roles,
                        client_identity, details, outcome FROM audit_events {clauses}
                    ORDER BY audit_id DESC LIMIT %s""",  # noqa: S608 - fixed clauses, values bound
                (*params, limit),
            )
            rows = await cur.fetchall()
        return [AuditRecord(r[0], AuditEntry(*r[1:])) for r in rows]

    async def prune_audit(self, before: float) -> int:
        async with self._transaction() as cur:
            await cur.execute("DELETE FROM audit_events WHERE occurred_at < %s", (before,))
            return int(cur.rowcount)

    # -- housekeeping ----------------------------------------------------------------------
    async def prune(self, now: float) -> int:
        async with self._transaction() as cur:
            await cur.execute("DELETE FROM clicks WHERE expires_at < %s", (now,))
            pruned = cur.rowcount
            await cur.execute("DELETE FROM conversions WHERE expires_at < %s", (now,))
            pruned += cur.rowcount
        return int(pruned)

    async def outbox_depth(self) -> tuple[int, int]:
        async with self._transaction() as cur:
            await cur.execute("SELECT status, count(*) FROM outbox GROUP BY status")
            counts = dict(await cur.fetchall())
        return int(counts.get(QUEUED, 0)), int(counts.get(FAILED, 0))
