"""SQLite implementation of :class:`server.store.Store` (WAL mode, one writer thread).

SQLite allows one writer at a time, so the server's statements run on one dedicated thread
with one connection (the intake worker processes have their own; all writers take turns
through :class:`WriteLock`). Operations that queue up while a transaction runs are committed
together in the next one (group commit): under load one fsync covers many, which is where
the throughput comes from. Each runs under its own savepoint, so one failing operation does
not take its neighbours down.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import queue
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from server._files import secure_database
from server.store._exceptions import StoreError
from server.store._records import (
    ClickOutcome,
    ConversionOutcome,
    DeliveryCounters,
    EventKind,
    FailedEventRecord,
    Identifiers,
    IntegrationRecord,
    IntegrationSettings,
    IntegrationState,
    NewClick,
    NewConversion,
    OutboxEvent,
    PayloadDecoder,
)

_log = structlog.get_logger(__name__)
T = TypeVar("T")

QUEUED: Final = 0
FAILED: Final = 1
_MAX_GROUP: Final = 64
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class SqliteConfig:
    """Where and how durably the store writes."""

    path: Path
    # FULL fsyncs the WAL at every commit: an ack survives power loss, not only a crash.
    synchronous: str = "FULL"
    attribution_window_s: float = 90 * 86400.0
    busy_timeout_ms: int = 5000


_INSERT_OUTBOX: Final = """INSERT INTO outbox (workspace_id, kind, source_id, occurred_at,
    created_at, email, phone_number, external_id, kx, payload, value, currency, next_attempt_at)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"""


class _Op:
    __slots__ = ("fn", "future", "group")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: Future[Any], group: bool):
        self.fn = fn
        self.future = future
        self.group = group


def _settings_to_json(settings: IntegrationSettings) -> str:
    data = asdict(settings)
    data["email_parameters"] = list(settings.email_parameters)
    return _dumps(data)


def _settings_from_json(text: str) -> IntegrationSettings:
    data = json.loads(text)
    data["email_parameters"] = tuple(data.get("email_parameters", ()))
    return IntegrationSettings(**data)


def _integration(row: sqlite3.Row) -> IntegrationRecord:
    return IntegrationRecord(
        workspace_id=row["workspace_id"],
        ciphertext=row["ciphertext"],
        key_fingerprint=row["key_fingerprint"],
        key_version=row["key_version"],
        settings=_settings_from_json(row["settings"]),
        state=IntegrationState(row["state"]),
        state_reason=row["state_reason"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def connect(config: SqliteConfig) -> sqlite3.Connection:
    """A connection with the store's pragmas (WAL, durability, busy timeout, bounded cache)."""
    conn = sqlite3.connect(config.path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={config.synchronous}")
    conn.execute(f"PRAGMA busy_timeout={int(config.busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA cache_size=-32000")  # 32 MB: bounded, whatever the backlog.
    return conn


class WriteLock:
    """Takes turns among the processes writing one database file.

    SQLite lets one writer in at a time and makes the others poll with growing sleeps (up
    to 100 ms); with several intake processes that polling, not the work, set the pace. A
    blocking ``flock`` on a file beside the database hands the turn over the moment it is
    free. Writers that do not take it (a manual ``sqlite3`` session) still meet SQLite's
    own lock and busy timeout.
    """

    def __init__(self, db_path: Path) -> None:
        self._fd = os.open(f"{db_path}.writelock", os.O_RDWR | os.O_CREAT, 0o600)

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Release the file descriptor."""
        os.close(self._fd)


def integrations_version(conn: sqlite3.Connection) -> int:
    """The counter that moves whenever an integration is created, changed or removed."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'integrations_version'").fetchone()
    return int(row[0])


def load_settings(conn: sqlite3.Connection) -> dict[str, IntegrationSettings]:
    """Every integration's settings, by workspace id."""
    rows = conn.execute("SELECT workspace_id, settings FROM integrations")
    return {workspace_id: _settings_from_json(text) for workspace_id, text in rows}


def _note_error(conn: sqlite3.Connection, workspace_id: str, error: str, now: float) -> None:
    """Record an integration's latest delivery error (shown by GetIntegration)."""
    conn.execute(
        "UPDATE integrations SET last_error = ?, last_error_at = ? WHERE workspace_id = ?",
        (error, now, workspace_id),
    )


_BUMP_VERSION: Final = "UPDATE meta SET value = value + 1 WHERE key = 'integrations_version'"


def insert_clicks(
    conn: sqlite3.Connection,
    clicks: Sequence[NewClick],
    settings: Mapping[str, IntegrationSettings],
    now: float,
    expires: float,
) -> list[ClickOutcome]:
    """Index and queue ``clicks`` inside the caller's transaction; one outcome per click.

    Shared by the store thread and the intake worker processes, so both decide a click's
    fate the same way: no integration, duplicate (in the index or earlier in the batch),
    anonymous (indexed, not queued) or queued.
    """
    outcomes: list[ClickOutcome] = [ClickOutcome.NO_INTEGRATION] * len(clicks)
    by_workspace: dict[str, list[int]] = defaultdict(list)
    for i, click in enumerate(clicks):
        if click.workspace_id in settings:
            by_workspace[click.workspace_id].append(i)
    index_rows: list[tuple[Any, ...]] = []
    outbox_rows: list[tuple[Any, ...]] = []
    anonymous: dict[str, int] = defaultdict(int)
    for workspace_id, positions in by_workspace.items():
        ids = [clicks[i].click_id for i in positions]
        seen: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            seen.update(
                r[0]
                for r in conn.execute(
                    f"SELECT click_id FROM clicks WHERE workspace_id = ? AND click_id IN ({marks})",  # noqa: S608 - only placeholders are interpolated
                    (workspace_id, *chunk),
                )
            )
        click_kind = EventKind.CLICK.value
        for i in positions:
            click = clicks[i]
            click_id = click.click_id
            if click_id in seen:
                outcomes[i] = ClickOutcome.DUPLICATE
                continue
            seen.add(click_id)
            who = click.identifiers
            email, phone, external, kx = (
                who.email,
                who.phone_number,
                who.external_id,
                who.kx,
            )
            index_rows.append(
                (
                    workspace_id,
                    click_id,
                    email,
                    phone,
                    external,
                    kx,
                    click.click_time,
                    expires,
                )
            )
            if email or phone or external or kx:
                outcomes[i] = ClickOutcome.QUEUED
                outbox_rows.append(
                    (workspace_id, click_kind, click_id, click.click_time, now,
                     email, phone, external, kx, click.payload, None, "", now)
                )  # fmt: skip
            else:
                outcomes[i] = ClickOutcome.ANONYMOUS
                anonymous[workspace_id] += 1
    if index_rows:
        conn.executemany("INSERT INTO clicks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", index_rows)
    if outbox_rows:
        conn.executemany(_INSERT_OUTBOX, outbox_rows)
    if anonymous:
        conn.executemany(
            "UPDATE integrations SET anonymous_count = anonymous_count + ? WHERE workspace_id = ?",
            [(n, ws) for ws, n in anonymous.items()],
        )
    return outcomes


class SqliteStore:
    """The store on one SQLite file."""

    def __init__(self, config: SqliteConfig, decode: PayloadDecoder) -> None:
        self._config = config
        self._decode = decode
        self._ops: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._write_lock: WriteLock | None = None
        # Which workspaces have an integration, and their settings: consulted for every click,
        # so kept in memory. Only this process changes integrations (intake workers only add
        # clicks), so it stays exact.
        self._settings: dict[str, IntegrationSettings] = {}

    # -- thread plumbing -------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self._config.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self._config)
        conn.row_factory = sqlite3.Row
        return conn

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
        except Exception as exc:  # a bug in the op: its caller sees it as it is
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return op, None, exc
        conn.execute("RELEASE op")
        return op, value, None

    async def _call(self, fn: Callable[[sqlite3.Connection], T], group: bool = False) -> T:
        if self._thread is None:
            raise StoreError("store is not open")
        future: Future[T] = Future()
        self._ops.put(_Op(fn, future, group))
        return await asyncio.wrap_future(future)

    async def open(self) -> None:
        secure_database(self._config.path)  # 0600 file, 0700 folder; -wal/-shm inherit it
        conn = self._connect()
        self._write_lock = WriteLock(self._config.path)
        with self._write_lock:
            self._migrate(conn)
        self._settings.update(load_settings(conn))
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

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        files = sorted(
            (
                f
                for f in resources.files("server.store.migrations").iterdir()
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

    # -- integrations ----------------------------------------------------------------------
    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        return self._settings.get(workspace_id)

    async def upsert_integration(
        self,
        workspace_id: str,
        ciphertext: str,
        key_fingerprint: str,
        key_version: int,
        settings: IntegrationSettings,
        now: float,
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
                       settings, state, state_reason, created_at, updated_at)
                   VALUES (?, ?, ?, ?, ?, ?, '', ?, ?)
                   ON CONFLICT (workspace_id) DO UPDATE SET ciphertext = excluded.ciphertext,
                       key_fingerprint = excluded.key_fingerprint, key_version = excluded.key_version,
                       settings = excluded.settings, state = excluded.state, state_reason = '',
                       updated_at = excluded.updated_at""",
                (
                    workspace_id,
                    ciphertext,
                    key_fingerprint,
                    key_version,
                    _settings_to_json(settings),
                    IntegrationState.ACTIVE.value,
                    now,
                    now,
                ),
            )
            # Events held while the old key was rejected are due again with the new key.
            conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE workspace_id = ? AND status = ? AND next_attempt_at > ?",
                (now, workspace_id, QUEUED, now),
            )
            conn.execute(_BUMP_VERSION)
            row = conn.execute(
                "SELECT * FROM integrations WHERE workspace_id = ?", (workspace_id,)
            ).fetchone()
            return _integration(row), existed

        record, existed = await self._call(op)
        self._settings[workspace_id] = settings
        return record, existed

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
        # Forget the settings first: clicks arriving from now on answer NO_INTEGRATION rather
        # than being queued behind a deletion that would drop them.
        previous = self._settings.pop(workspace_id, None)

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
            conn.execute("DELETE FROM leases WHERE workspace_id = ?", (workspace_id,))
            conn.execute(_BUMP_VERSION)
            return int(dropped)

        try:
            result = await self._call(op)
        except BaseException:
            if previous is not None:
                self._settings[workspace_id] = previous
            raise
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

    async def reject_key(self, workspace_id: str, ciphertext: str, reason: str, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    """UPDATE integrations SET state = ?, state_reason = ?, last_error = ?, last_error_at = ?
                   WHERE workspace_id = ? AND ciphertext = ?""",
                    (
                        IntegrationState.KEY_REJECTED.value,
                        reason,
                        reason,
                        now,
                        workspace_id,
                        ciphertext,
                    ),
                ).rowcount
                == 1
            )

        return await self._call(op)

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
        expires = now + self._config.attribution_window_s

        def op(conn: sqlite3.Connection) -> list[ClickOutcome]:
            return insert_clicks(conn, clicks, settings, now, expires)

        return await self._call(op, group=True)

    async def take_conversion(self, conversion: NewConversion, now: float) -> ConversionOutcome:
        expires = now + self._config.attribution_window_s

        def op(conn: sqlite3.Connection) -> ConversionOutcome:
            ws = conversion.workspace_id
            if ws not in self._settings:
                return ConversionOutcome.NO_INTEGRATION
            if conn.execute(
                "SELECT 1 FROM conversions WHERE workspace_id = ? AND conversion_id = ?",
                (ws, conversion.conversion_id),
            ).fetchone():
                return ConversionOutcome.DUPLICATE
            identifiers = conversion.identifiers
            if conversion.click_id:
                row = conn.execute(
                    """SELECT email, phone_number, external_id, kx FROM clicks
                       WHERE workspace_id = ? AND click_id = ?""",
                    (ws, conversion.click_id),
                ).fetchone()
                if row is not None:
                    # The recorded click identifies the person who clicked: it wins.
                    identifiers = Identifiers(*row).merged_over(identifiers)
            conn.execute(
                "INSERT INTO conversions VALUES (?, ?, ?)", (ws, conversion.conversion_id, expires)
            )
            if not identifiers.any():
                return ConversionOutcome.UNATTRIBUTED
            conn.execute(
                _INSERT_OUTBOX,
                (ws, EventKind.CONVERSION.value, conversion.conversion_id,
                 conversion.conversion_time, now, identifiers.email, identifiers.phone_number,
                 identifiers.external_id, identifiers.kx,
                 _dumps(dict(conversion.properties)).encode(), conversion.value,
                 conversion.currency, now),
            )  # fmt: skip
            return ConversionOutcome.QUEUED

        return await self._call(op, group=True)

    # -- delivery --------------------------------------------------------------------------
    async def acquire_lease(self, workspace_id: str, owner: str, ttl_s: float, now: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    """INSERT INTO leases VALUES (?, ?, ?)
                   ON CONFLICT (workspace_id) DO UPDATE SET owner = excluded.owner,
                       expires_at = excluded.expires_at
                   WHERE leases.owner = excluded.owner OR leases.expires_at < ?""",
                    (workspace_id, owner, now + ttl_s, now),
                ).rowcount
                == 1
            )

        return await self._call(op)

    async def release_lease(self, workspace_id: str, owner: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM leases WHERE workspace_id = ? AND owner = ?", (workspace_id, owner)
            )

        await self._call(op)

    async def workspaces_with_due_events(self, now: float) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                """SELECT workspace_id FROM integrations i WHERE state = ? AND EXISTS (
                       SELECT 1 FROM outbox o WHERE o.workspace_id = i.workspace_id
                       AND o.status = ? AND o.next_attempt_at <= ?)""",
                (IntegrationState.ACTIVE.value, QUEUED, now),
            )
            return [r[0] for r in rows]

        return await self._call(op)

    async def due_events(self, workspace_id: str, now: float, limit: int) -> list[OutboxEvent]:
        settings = self._settings.get(workspace_id, IntegrationSettings())

        def op(conn: sqlite3.Connection) -> list[Any]:
            return conn.execute(
                """SELECT event_id, kind, source_id, occurred_at, created_at, payload,
                          value, currency, attempts, email, phone_number, external_id, kx
                   FROM outbox WHERE workspace_id = ? AND status = ? AND next_attempt_at <= ?
                   ORDER BY next_attempt_at, event_id LIMIT ?""",
                (workspace_id, QUEUED, now, limit),
            ).fetchall()

        rows = await self._call(op)
        # Decoded here, not on the store thread: decoding thousands of payloads there would
        # hold up every other workspace's intake and delivery behind this one's backlog.
        return [
            OutboxEvent(
                event_id=r[0],
                workspace_id=workspace_id,
                kind=(kind := EventKind(r[1])),
                source_id=r[2],
                occurred_at=r[3],
                created_at=r[4],
                identifiers=Identifiers(r[9], r[10], r[11], r[12]),
                properties=self._decode(kind, r[5], settings),
                value=r[6],
                currency=r[7],
                attempts=r[8],
            )
            for r in rows
        ]

    async def mark_delivered(self, workspace_id: str, event_ids: Sequence[int], now: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
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
        workspace_id: str,
        event_ids: Sequence[int],
        next_attempt_at: float,
        error: str,
        now: float,
        count_attempt: bool = True,
    ) -> None:
        step = 1 if count_attempt else 0

        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                """UPDATE outbox SET attempts = attempts + ?, next_attempt_at = ?, last_error = ?
                   WHERE event_id = ? AND workspace_id = ?""",
                [(step, next_attempt_at, error, e, workspace_id) for e in event_ids],
            )
            _note_error(conn, workspace_id, error, now)

        await self._call(op, group=True)

    async def mark_failed(
        self, workspace_id: str, event_ids: Sequence[int], error: str, now: float
    ) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.executemany(
                """UPDATE outbox SET status = ?, attempts = attempts + 1, last_error = ?, failed_at = ?
                   WHERE event_id = ? AND workspace_id = ?""",
                [(FAILED, error, now, e, workspace_id) for e in event_ids],
            )
            _note_error(conn, workspace_id, error, now)

        await self._call(op, group=True)

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
        self, workspace_id: str, event_ids: Sequence[int] | None, now: float
    ) -> int:
        def op(conn: sqlite3.Connection) -> int:
            sql = """UPDATE outbox SET status = ?, attempts = 0, next_attempt_at = ?, failed_at = NULL
                     WHERE workspace_id = ? AND status = ?"""
            if event_ids is None:
                return int(conn.execute(sql, (QUEUED, now, workspace_id, FAILED)).rowcount)
            total = 0
            for e in event_ids:
                total += conn.execute(
                    sql + " AND event_id = ?", (QUEUED, now, workspace_id, FAILED, e)
                ).rowcount
            return total

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
