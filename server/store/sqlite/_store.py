"""SQLite implementation of :class:`server.store.Store` (WAL mode, one writer thread).

SQLite allows one writer at a time, so this process's statements run on one dedicated thread
with one connection (other processes sharing the file — intake workers, another replica on
the same host — have their own; all writers take turns through :class:`WriteLock`).
Operations that queue up while a transaction runs are committed together in the next one
(group commit): under load one fsync covers many, which is where the throughput comes from.
Each runs under its own savepoint, so one failing operation does not take its neighbours down.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future
from typing import Any, Final, TypeVar

import structlog

from server._files import secure_database
from server.store._codec import settings_from_json, settings_to_json
from server.store._config import SqliteConfig
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
from server.store._rules import ascii_lower
from server.store._rules import audit_where as _audit_where
from server.store._settings import SettingsCache
from server.store.sqlite._connection import NOW, WriteLock, connect, migrate
from server.store.sqlite._intake import (
    insert_clicks,
    insert_conversion,
    integrations_of,
    prepare_clicks,
)

_log = structlog.get_logger(__name__)
T = TypeVar("T")

QUEUED: Final = 0
FAILED: Final = 1
_MAX_GROUP: Final = 64


class _Op:
    __slots__ = ("fn", "future", "group", "raw")

    def __init__(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        future: Future[Any],
        group: bool,
        raw: bool = False,
    ):
        self.fn = fn
        self.future = future
        self.group = group
        # Run outside any transaction (a WAL checkpoint cannot run inside one).
        self.raw = raw


def _integration(row: sqlite3.Row) -> IntegrationRecord:
    return IntegrationRecord(
        workspace_id=row["workspace_id"],
        ciphertext=row["ciphertext"],
        key_fingerprint=row["key_fingerprint"],
        key_version=row["key_version"],
        settings=settings_from_json(row["settings"]),
        state=IntegrationState(row["state"]),
        state_reason=row["state_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        account=row["account"],
    )


def _note_error(conn: sqlite3.Connection, workspace_id: str, error: str, now: float) -> None:
    """Record an integration's latest delivery error (shown by GetIntegration)."""
    conn.execute(
        "UPDATE integrations SET last_error = ?, last_error_at = ? WHERE workspace_id = ?",
        (error, now, workspace_id),
    )


def _failed_where(workspace_id: str, sel: FailedSelection) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (and its values) of a workspace's failed events matching ``sel``."""
    clauses = ["workspace_id = ?", "status = ?"]
    params: list[Any] = [workspace_id, FAILED]
    if sel.failed_after is not None:
        clauses.append("coalesce(failed_at, created_at) >= ?")
        params.append(sel.failed_after)
    if sel.failed_before is not None:
        clauses.append("coalesce(failed_at, created_at) < ?")
        params.append(sel.failed_before)
    if sel.error_contains:
        clauses.append("instr(lower(last_error), ?) > 0")
        params.append(ascii_lower(sel.error_contains))
    if sel.kind is not None:
        clauses.append("kind = ?")
        params.append(sel.kind.value)
    if sel.event_ids is not None:
        clauses.append(f"event_id IN ({','.join('?' * len(sel.event_ids))})")
        params.extend(sel.event_ids)
    return " AND ".join(clauses), tuple(params)


def _erasure_match(targets: ErasureTargets) -> tuple[str, tuple[str, ...]]:
    """A condition true for rows carrying any of the identifiers (emails ignoring ASCII case)."""
    clauses: list[str] = []
    params: list[str] = []
    for column, values, collate in (
        ("email", targets.emails, " COLLATE NOCASE"),
        ("phone_number", targets.phone_numbers, ""),
        ("external_id", targets.external_ids, ""),
        ("kx", targets.kxs, ""),
    ):
        if values:
            clauses.append(f"{column}{collate} IN ({','.join('?' * len(values))})")
            params.extend(values)
    return " OR ".join(clauses), tuple(params)


_CHECKPOINT_ATTEMPTS: Final = 50


def _truncate_wal(conn: sqlite3.Connection) -> None:
    """Copy the WAL into the database and truncate it to zero bytes.

    Another process reading (an intake worker between transactions is not) keeps the WAL
    busy for a moment; try again for up to a few seconds before reporting it.
    """
    for _ in range(_CHECKPOINT_ATTEMPTS):
        busy, _log_frames, _done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return
        time.sleep(0.1)
    _log.warning("WAL checkpoint after erasure stayed busy; the next checkpoint clears it")


def _fence(conn: sqlite3.Connection, lease: Lease) -> None:
    """Refuse the write unless ``lease`` is still held (inside the write transaction)."""
    if (
        conn.execute(
            "SELECT 1 FROM leases WHERE name = ? AND owner = ? AND token = ?",
            (lease.name, lease.owner, lease.token),
        ).fetchone()
        is None
    ):
        raise LeaseLost(f"lease {lease.name} changed hands")


class SqliteStore:
    """The store on one SQLite file."""

    def __init__(self, config: SqliteConfig) -> None:
        self._config = config
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._write_lock: WriteLock | None = None
        # Settings by workspace, for extracting identifiers before a commit (a hint only:
        # intake decides "no integration" in its transaction). Refreshed by every intake
        # transaction, so another process's changes show up with the next click.
        self._settings = SettingsCache()

    # -- thread plumbing -------------------------------------------------------------------
    def _run(self, conn: sqlite3.Connection) -> None:
        while True:
            op = self._ops.get()
            if op is None:
                conn.close()
                return
            batch = [op]
            if op.group:
                # Group commit: take every intake op already waiting into this transaction.
                while len(batch) < _MAX_GROUP:
                    try:
                        nxt = self._ops.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None or not nxt.group:
                        self._ops.put(nxt)  # keep order-insensitive ops for the next turn
                        break
                    batch.append(nxt)
            try:
                self._execute(conn, batch)
            except Exception:  # the thread must outlive any one op, or every caller hangs
                _log.exception("store thread error")
                for op in batch:
                    if not op.future.done():
                        op.future.set_exception(StoreError("store error"))

    def _execute(self, conn: sqlite3.Connection, batch: list[_Op]) -> None:
        # A caller that gave up (its task was cancelled) does not get its op run; every op
        # that does run can no longer be cancelled, so its result is always deliverable.
        batch = [op for op in batch if op.future.set_running_or_notify_cancel()]
        if not batch:
            return
        results: list[tuple[_Op, Any, BaseException | None]] = []
        assert self._write_lock is not None  # set by open(), before the thread starts
        if batch[0].raw:  # never grouped: raw ops are not group ops
            op = batch[0]
            with self._write_lock:
                try:
                    value = op.fn(conn)
                except Exception as exc:
                    op.future.set_exception(StoreError(str(exc)))
                else:
                    op.future.set_result(value)
            return
        with self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                for op in batch:
                    results.append(self._run_op(conn, op))
                conn.execute("COMMIT")
            except Exception as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                _log.error("store transaction failed", error=str(exc))
                failure = StoreError(f"transaction failed: {exc}")
                results = [(op, None, failure) for op in batch]
        # Only now, after COMMIT returned, may any caller ack.
        for op, value, error in results:
            if error is None:
                op.future.set_result(value)
            else:
                op.future.set_exception(error)

    @staticmethod
    def _run_op(conn: sqlite3.Connection, op: _Op) -> tuple[_Op, Any, BaseException | None]:
        # Each op under its own savepoint: one that fails leaves the others of the group.
        conn.execute("SAVEPOINT op")
        try:
            value = op.fn(conn)
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return op, None, StoreError(str(exc))
        except Exception as exc:  # LeaseLost, or a bug in the op: its caller sees it as it is
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return op, None, exc
        conn.execute("RELEASE op")
        return op, value, None

    async def _call(
        self, fn: Callable[[sqlite3.Connection], T], group: bool = False, raw: bool = False
    ) -> T:
        if self._thread is None:
            raise StoreError("store is not open")
        future: Future[T] = Future()
        self._ops.put(_Op(fn, future, group and not raw, raw))
        return await asyncio.wrap_future(future)

    async def open(self) -> None:
        secure_database(self._config.path)  # 0600 file, 0700 folder; -wal/-shm inherit it
        try:
            conn = connect(self._config)
            conn.row_factory = sqlite3.Row
            self._write_lock = WriteLock(self._config)
            with self._write_lock:
                migrate(conn)
            for workspace_id, text in conn.execute(
                "SELECT workspace_id, settings FROM integrations"
            ):
                self._settings.set(workspace_id, settings_from_json(text))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self._config.path}: {exc}") from None
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="sqlite-store", daemon=True
        )
        self._thread.start()

    async def close(self) -> None:
        if self._thread is not None:
            self._ops.put(None)
            await asyncio.to_thread(self._thread.join)
            self._thread = None
        if self._write_lock is not None:
            self._write_lock.close()
            self._write_lock = None

    def subscribe(self, wake: Callable[[], None]) -> None:
        # Processes sharing one file have no channel to each other; this process's own
        # intake wakes its delivery directly, and the others poll.
        return

    # -- integrations ----------------------------------------------------------------------
    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        return self._settings.get(workspace_id)

    async def load_settings(self, workspace_ids: Collection[str]) -> None:
        unknown = self._settings.unknown(workspace_ids)
        if not unknown:
            return

        def op(conn: sqlite3.Connection) -> dict[str, IntegrationSettings]:
            return integrations_of(conn, unknown)

        self._settings.learn(unknown, await self._call(op))

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
        def op(conn: sqlite3.Connection) -> tuple[IntegrationRecord, bool]:
            existed = (
                conn.execute(
                    "SELECT 1 FROM integrations WHERE workspace_id = ?", (workspace_id,)
                ).fetchone()
                is not None
            )
            conn.execute(
                """INSERT INTO integrations (workspace_id, ciphertext, key_fingerprint, key_version,
                       settings, state, state_reason, created_at, updated_at, account)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (workspace_id) DO UPDATE SET ciphertext = excluded.ciphertext,
                       key_fingerprint = excluded.key_fingerprint, key_version = excluded.key_version,
                       settings = excluded.settings, state = excluded.state,
                       state_reason = excluded.state_reason,
                       updated_at = excluded.updated_at, account = excluded.account""",
                (workspace_id, ciphertext, key_fingerprint, key_version, settings_to_json(settings),
                 state.value, state_reason, now, now, account),
            )  # fmt: skip
            # Events held while the old key was rejected are due again with the new key.
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE workspace_id = ? AND status = ? AND next_attempt_at > ?",
                (now, workspace_id, QUEUED, now),
            )
            row = conn.execute(
                "SELECT * FROM integrations WHERE workspace_id = ?", (workspace_id,)
            ).fetchone()
            return _integration(row), existed

        record, existed = await self._call(op)
        self._settings.set(workspace_id, settings)
        return record, existed

    async def set_key_state(
        self,
        workspace_id: str,
        ciphertext: str,
        state: IntegrationState,
        reason: str,
        now: float,
        only_from: IntegrationState | None = None,
    ) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            sql = """UPDATE integrations SET state = ?, state_reason = ?, updated_at = ?
                     WHERE workspace_id = ? AND ciphertext = ?"""
            params: tuple[object, ...] = (state.value, reason, now, workspace_id, ciphertext)
            if only_from is not None:
                sql += " AND state = ?"
                params += (only_from.value,)
            if conn.execute(sql, params).rowcount != 1:
                return False
            if state.delivers:
                # Events held under a rejected key are due again.
                conn.execute(
                    "UPDATE outbox SET next_attempt_at = ? WHERE workspace_id = ? AND status = ? AND next_attempt_at > ?",
                    (now, workspace_id, QUEUED, now),
                )
            return True

        return await self._call(op)

    async def get_integration(self, workspace_id: str) -> IntegrationRecord | None:
        def op(conn: sqlite3.Connection) -> IntegrationRecord | None:
            row = conn.execute(
                "SELECT * FROM integrations WHERE workspace_id = ?", (workspace_id,)
            ).fetchone()
            return None if row is None else _integration(row)

        return await self._call(op)

    async def list_integrations(self, after: str, limit: int) -> list[IntegrationRecord]:
        def op(conn: sqlite3.Connection) -> list[IntegrationRecord]:
            rows = conn.execute(
                "SELECT * FROM integrations WHERE workspace_id > ? ORDER BY workspace_id LIMIT ?",
                (after, limit),
            )
            return [_integration(r) for r in rows]

        return await self._call(op)

    async def delete_integration(self, workspace_id: str) -> int | None:
        def op(conn: sqlite3.Connection) -> int | None:
            if (
                conn.execute(
                    "DELETE FROM integrations WHERE workspace_id = ?", (workspace_id,)
                ).rowcount
                == 0
            ):
                return None
            dropped = conn.execute(
                "DELETE FROM outbox WHERE workspace_id = ?", (workspace_id,)
            ).rowcount
            return int(dropped)

        result = await self._call(op)
        self._settings.forget(workspace_id)
        return result

    async def replace_ciphertext(
        self, workspace_id: str, old: str, new: str, key_version: int, now: float
    ) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    """UPDATE integrations SET ciphertext = ?, key_version = ?, updated_at = ?
                   WHERE workspace_id = ? AND ciphertext = ?""",
                    (new, key_version, now, workspace_id, old),
                ).rowcount
                == 1
            )

        return await self._call(op)

    async def set_account(self, workspace_id: str, ciphertext: str, account: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE integrations SET account = ? WHERE workspace_id = ? AND ciphertext = ?",
                (account, workspace_id, ciphertext),
            )

        await self._call(op)

    async def delivery_counters(self, workspace_id: str) -> DeliveryCounters:
        def op(conn: sqlite3.Connection) -> DeliveryCounters:
            row = conn.execute(
                """SELECT delivered_count, anonymous_count, last_delivery_at, last_error, last_error_at
                   FROM integrations WHERE workspace_id = ?""",
                (workspace_id,),
            ).fetchone()
            counts = dict.fromkeys((QUEUED, FAILED), 0)
            for status, count in conn.execute(
                "SELECT status, count(*) FROM outbox WHERE workspace_id = ? GROUP BY status",
                (workspace_id,),
            ):
                counts[status] = count
            if row is None:
                return DeliveryCounters(queued=counts[QUEUED], failed=counts[FAILED])
            return DeliveryCounters(
                queued=counts[QUEUED],
                delivered=row["delivered_count"],
                failed=counts[FAILED],
                anonymous_clicks=row["anonymous_count"],
                last_delivery_at=row["last_delivery_at"],
                last_error=row["last_error"],
                last_error_at=row["last_error_at"],
            )

        return await self._call(op)

    # -- intake ----------------------------------------------------------------------------
    async def take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        settings = self._settings
        prepared = prepare_clicks(
            clicks,
            now,
            now + self._config.attribution_window_s,
            lambda ws: settings.get(ws) is not None,
        )

        def op(conn: sqlite3.Connection) -> tuple[list[ClickOutcome], dict[str, Any]]:
            return insert_clicks(conn, prepared)

        outcomes, found = await self._call(op, group=True)
        self._settings.learn({c.workspace_id for c in clicks}, found)
        return outcomes

    async def take_conversion(self, conversion: NewConversion, now: float) -> ConversionOutcome:
        expires = now + self._config.attribution_window_s

        def op(conn: sqlite3.Connection) -> ConversionOutcome:
            return insert_conversion(conn, conversion, now, expires)

        return await self._call(op, group=True)

    # -- leases ----------------------------------------------------------------------------
    async def acquire_lease(self, name: str, owner: str, ttl_s: float) -> Lease | None:
        def op(conn: sqlite3.Connection) -> Lease | None:
            before = conn.execute(
                f"SELECT usage, token, {NOW} - usage_at, expires_at - {NOW} FROM leases WHERE name = ?",  # noqa: S608 - NOW is a constant expression
                (name,),
            ).fetchone()
            row = conn.execute(
                f"""INSERT INTO leases (name, owner, token, expires_at) VALUES (?, ?, 1, {NOW} + ?)
                   ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                       token = leases.token + 1, expires_at = excluded.expires_at
                   WHERE leases.owner = excluded.owner OR leases.expires_at < {NOW}
                   RETURNING token, expires_at""",  # noqa: S608 - NOW is a constant expression
                (name, owner, ttl_s),
            ).fetchone()
            if row is None:
                return None
            handover = None
            if before is not None:
                handover = LeaseHandover(before[0], before[1], before[2] or 0.0, before[3])
            return Lease(name, owner, row[0], row[1], ttl_s, handover)

        return await self._call(op)

    async def renew_lease(self, lease: Lease, usage: str = "") -> Lease | None:
        def op(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(
                f"""UPDATE leases SET expires_at = {NOW} + ?, usage = ?, usage_at = {NOW}
                   WHERE name = ? AND owner = ? AND token = ? RETURNING expires_at""",  # noqa: S608 - NOW is a constant expression
                (lease.ttl_s, usage, lease.name, lease.owner, lease.token),
            ).fetchone()
            if row is None:
                return None
            return Lease(lease.name, lease.owner, lease.token, row[0], lease.ttl_s)

        return await self._call(op)

    async def release_lease(self, lease: Lease, usage: str = "") -> None:
        def op(conn: sqlite3.Connection) -> None:
            # Expire rather than delete: the token must keep growing across holders.
            conn.execute(
                f"""UPDATE leases SET expires_at = 0, usage = ?, usage_at = {NOW}
                   WHERE name = ? AND owner = ? AND token = ?""",  # noqa: S608 - NOW is a constant expression
                (usage, lease.name, lease.owner, lease.token),
            )

        await self._call(op)

    # -- delivery --------------------------------------------------------------------------
    async def workspaces_with_due_events(self, now: float) -> list[DueWorkspace]:
        def op(conn: sqlite3.Connection) -> list[DueWorkspace]:
            rows = conn.execute(
                """SELECT workspace_id, account FROM integrations i WHERE state IN (?, ?) AND EXISTS (
                       SELECT 1 FROM outbox o WHERE o.workspace_id = i.workspace_id
                       AND o.status = ? AND o.next_attempt_at <= ?)""",
                (IntegrationState.ACTIVE.value, IntegrationState.UNVERIFIED.value, QUEUED, now),
            )
            return [DueWorkspace(r[0], r[1]) for r in rows]

        return await self._call(op)

    async def due_events(self, workspace_id: str, now: float, limit: int) -> list[OutboxEvent]:
        def op(conn: sqlite3.Connection) -> list[OutboxEvent]:
            rows = conn.execute(
                """SELECT event_id, kind, source_id, occurred_at, created_at, payload,
                          value, currency, attempts, email, phone_number, external_id, kx
                   FROM outbox WHERE workspace_id = ? AND status = ? AND next_attempt_at <= ?
                   ORDER BY next_attempt_at, event_id LIMIT ?""",
                (workspace_id, QUEUED, now, limit),
            ).fetchall()
            return [
                OutboxEvent(
                    event_id=r[0],
                    workspace_id=workspace_id,
                    kind=EventKind(r[1]),
                    source_id=r[2],
                    occurred_at=r[3],
                    created_at=r[4],
                    identifiers=Identifiers(r[9], r[10], r[11], r[12]),
                    payload=r[5],
                    value=r[6],
                    currency=r[7],
                    attempts=r[8],
                )
                for r in rows
            ]

        return await self._call(op)

    async def mark_delivered(
        self, lease: Lease, workspace_id: str, event_ids: Sequence[int], now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            _fence(conn, lease)
            deleted = conn.executemany(
                "DELETE FROM outbox WHERE event_id = ? AND workspace_id = ?",
                [(e, workspace_id) for e in event_ids],
            ).rowcount
            conn.execute(
                """UPDATE integrations SET delivered_count = delivered_count + ?, last_delivery_at = ?
                   WHERE workspace_id = ?""",
                (deleted, now, workspace_id),
            )

        await self._call(op, group=True)

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
        step = 1 if count_attempt else 0

        def op(conn: sqlite3.Connection) -> None:
            _fence(conn, lease)
            conn.executemany(
                """UPDATE outbox SET attempts = attempts + ?, next_attempt_at = ?, last_error = ?
                   WHERE event_id = ? AND workspace_id = ?""",
                [(step, next_attempt_at, error, e, workspace_id) for e in event_ids],
            )
            _note_error(conn, workspace_id, error, now)

        await self._call(op, group=True)

    async def mark_failed(
        self, lease: Lease, workspace_id: str, event_ids: Sequence[int], error: str, now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            _fence(conn, lease)
            conn.executemany(
                """UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ?, failed_at = ?
                   WHERE event_id = ? AND workspace_id = ?""",
                [(FAILED, error, now, e, workspace_id) for e in event_ids],
            )
            _note_error(conn, workspace_id, error, now)

        await self._call(op, group=True)

    async def reject_key(
        self, lease: Lease, workspace_id: str, ciphertext: str, reason: str, now: float
    ) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            _fence(conn, lease)
            return (
                conn.execute(
                    """UPDATE integrations SET state = ?, state_reason = ?, last_error = ?, last_error_at = ?
                   WHERE workspace_id = ? AND ciphertext = ?""",
                    (IntegrationState.KEY_REJECTED.value, reason, reason, now, workspace_id,
                     ciphertext),
                ).rowcount
                == 1
            )  # fmt: skip

        return await self._call(op)

    # -- failed events ---------------------------------------------------------------------
    async def list_failed(
        self, workspace_id: str, after_event_id: int, limit: int
    ) -> list[FailedEventRecord]:
        def op(conn: sqlite3.Connection) -> list[FailedEventRecord]:
            rows = conn.execute(
                """SELECT event_id, kind, source_id, attempts, last_error, created_at, failed_at
                   FROM outbox WHERE workspace_id = ? AND status = ? AND event_id > ?
                   ORDER BY event_id LIMIT ?""",
                (workspace_id, FAILED, after_event_id, limit),
            )
            return [
                FailedEventRecord(
                    r[0], workspace_id, EventKind(r[1]), r[2], r[3], r[4], r[5], r[6] or r[5]
                )
                for r in rows
            ]

        return await self._call(op)

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

        def op(conn: sqlite3.Connection) -> int:
            if dry_run:
                head: tuple[Any, ...] = ()
                sql = f"SELECT count(*) FROM outbox WHERE {where}"  # noqa: S608 - fixed clauses, values bound
            else:
                sql = f"""UPDATE outbox SET status = ?, attempts = 0, next_attempt_at = ?,
                          failed_at = NULL WHERE {where}"""  # noqa: S608 - fixed clauses, values bound
                head = (QUEUED, now)

            def run(extra: str, more: tuple[Any, ...]) -> int:
                cur = conn.execute(sql + extra, (*head, *params, *more))
                return int(cur.fetchone()[0]) if dry_run else int(cur.rowcount)

            if event_ids is None:
                return run("", ())
            return sum(run(" AND event_id = ?", (e,)) for e in dict.fromkeys(event_ids))

        return await self._call(op)

    # -- erasure ---------------------------------------------------------------------------
    async def erase_identifiers(
        self, workspace_id: str | None, targets: ErasureTargets
    ) -> ErasureCounts:
        match, params = _erasure_match(targets)
        scope, scope_params = (
            ("workspace_id = ? AND ", (workspace_id,)) if workspace_id else ("", ())
        )

        def op(conn: sqlite3.Connection) -> ErasureCounts:
            clicks = conn.execute(
                f"DELETE FROM clicks WHERE {scope}({match})",  # noqa: S608 - fixed clauses, values bound
                (*scope_params, *params),
            ).rowcount
            counts = dict.fromkeys((QUEUED, FAILED), 0)
            for status in (QUEUED, FAILED):
                counts[status] = conn.execute(
                    f"DELETE FROM outbox WHERE {scope}status = ? AND ({match})",  # noqa: S608 - fixed clauses, values bound
                    (*scope_params, status, *params),
                ).rowcount
            return ErasureCounts(int(clicks), int(counts[QUEUED]), int(counts[FAILED]))

        counts = await self._call(op)
        # The deleted rows were zeroed in the pages (secure_delete); older images of those
        # pages still sit in the WAL until it is checkpointed and truncated.
        await self._call(_truncate_wal, raw=True)
        return counts

    # -- audit trail -----------------------------------------------------------------------
    async def record_audit(self, entry: AuditEntry) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                """INSERT INTO audit_events (occurred_at, action, workspace_id, actor, roles,
                       client_identity, details, outcome) VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                (entry.occurred_at, entry.action, entry.workspace_id, entry.actor, entry.roles,
                 entry.client_identity, entry.details, entry.outcome),
            )  # fmt: skip
            return int(cur.lastrowid or 0)

        return await self._call(op)

    async def list_audit(
        self,
        workspace_id: str | None,
        since: float | None,
        until: float | None,
        before_id: int | None,
        limit: int,
    ) -> list[AuditRecord]:
        clauses, params = _audit_where(workspace_id, since, until, before_id, "?")

        def op(conn: sqlite3.Connection) -> list[AuditRecord]:
            rows = conn.execute(
                f"""SELECT audit_id, occurred_at, action, workspace_id, actor, roles,
                        client_identity, details, outcome FROM audit_events {clauses}
                    ORDER BY audit_id DESC LIMIT ?""",  # noqa: S608 - fixed clauses, values bound
                (*params, limit),
            )
            return [AuditRecord(r[0], AuditEntry(*r[1:])) for r in rows]

        return await self._call(op)

    async def prune_audit(self, before: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return int(
                conn.execute("DELETE FROM audit_events WHERE occurred_at < ?", (before,)).rowcount
            )

        return await self._call(op)

    # -- housekeeping ----------------------------------------------------------------------
    async def prune(self, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            pruned = conn.execute("DELETE FROM clicks WHERE expires_at < ?", (now,)).rowcount
            pruned += conn.execute("DELETE FROM conversions WHERE expires_at < ?", (now,)).rowcount
            return int(pruned)

        return await self._call(op)

    async def outbox_depth(self) -> tuple[int, int]:
        def op(conn: sqlite3.Connection) -> tuple[int, int]:
            counts = dict(
                conn.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
            )
            return int(counts.get(QUEUED, 0)), int(counts.get(FAILED, 0))

        return await self._call(op)
