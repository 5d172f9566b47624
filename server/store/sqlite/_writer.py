"""The click writer for another process: its own connection, the shared write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from server.store._codec import settings_from_json
from server.store._config import SqliteConfig
from server.store._exceptions import StoreError
from server.store._records import ClickOutcome, IntegrationSettings, NewClick
from server.store.sqlite._connection import WriteLock, connect
from server.store.sqlite._intake import insert_clicks


class SqliteClickWriter:
    """Commits click batches on a connection of its own (an intake worker process)."""

    def __init__(self, config: SqliteConfig) -> None:
        self._config = config
        try:
            self._conn = connect(config)
            self._settings = {
                ws: settings_from_json(text)
                for ws, text in self._conn.execute(
                    "SELECT workspace_id, settings FROM integrations"
                )
            }
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {config.path}: {exc}") from None
        self._lock = WriteLock(config)

    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        settings = self._settings.get(workspace_id)
        if settings is None:
            # A workspace registered since this worker started: read its settings now, not
            # after its first commit — validation needs them (e.g. default_phone_region).
            try:
                row = self._conn.execute(
                    "SELECT settings FROM integrations WHERE workspace_id = ?", (workspace_id,)
                ).fetchone()
            except sqlite3.Error:
                return None
            if row is not None:
                settings = self._settings[workspace_id] = settings_from_json(row[0])
        return settings

    def take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        expires = now + self._config.attribution_window_s
        conn = self._conn
        try:
            with self._lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    outcomes, found = insert_clicks(conn, clicks, now, expires)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"could not commit: {exc}") from None
        for click in clicks:
            ws = click.workspace_id
            if ws in found:
                self._settings[ws] = found[ws]
            else:
                self._settings.pop(ws, None)
        return outcomes

    def close(self) -> None:
        self._conn.close()
        self._lock.close()
