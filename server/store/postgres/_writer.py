"""The click writer for an intake worker process: a plain (blocking) connection of its own."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
import structlog

from server.store._codec import settings_from_json
from server.store._config import PostgresConfig
from server.store._exceptions import StoreError
from server.store._records import ClickOutcome, IntegrationSettings, NewClick
from server.store._settings import SettingsCache
from server.store.postgres._connection import conninfo
from server.store.postgres._intake import DEADLOCK_RETRIES, Outcome, Rows, click_statements

_log = structlog.get_logger(__name__)


class PostgresClickWriter:
    """Commits click batches on a connection of its own, the same transaction as the store."""

    def __init__(self, config: PostgresConfig) -> None:
        self._config = config
        self._settings = SettingsCache()
        self._conn: psycopg.Connection[Any] | None = None
        self._connection()

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(self._config.url, **conninfo(self._config))
                row = conn.execute("SHOW synchronous_commit").fetchone()
                if row is not None and row[0] == "off":
                    conn.execute("SET synchronous_commit TO on")  # an ack is a durable commit
                conn.commit()
            except psycopg.Error as exc:
                raise StoreError(f"postgres: {type(exc).__name__}: {exc}") from exc
            self._conn = conn
        return self._conn

    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        if self._settings.unknown((workspace_id,)):
            try:
                conn = self._connection()
                rows = conn.execute(
                    "SELECT workspace_id, settings FROM integrations WHERE workspace_id = %s",
                    (workspace_id,),
                ).fetchall()
                conn.commit()
            except (psycopg.Error, StoreError):
                return None
            self._settings.learn((workspace_id,), {ws: settings_from_json(t) for ws, t in rows})
        return self._settings.get(workspace_id)

    def take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                outcomes, found = self._take(clicks, now)
            except psycopg.errors.DeadlockDetected:
                if attempt == DEADLOCK_RETRIES:
                    raise StoreError("postgres: deadlock persisted") from None
                _log.warning("intake transaction retried after a deadlock", attempt=attempt)
                continue
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None  # reconnect for the next batch
                raise StoreError(f"postgres: {type(exc).__name__}: {exc}") from exc
            self._settings.learn({c.workspace_id for c in clicks}, found)
            return outcomes
        raise AssertionError("unreachable")

    def _take(self, clicks: Sequence[NewClick], now: float) -> Outcome:
        steps = click_statements(clicks, now, now + self._config.attribution_window_s)
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            try:
                sql, params = next(steps)
                while True:
                    cur.execute(sql, params)
                    rows: Rows = cur.fetchall() if cur.description else []
                    sql, params = steps.send(rows)
            except StopIteration as done:
                result: Outcome = done.value
        return result

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
