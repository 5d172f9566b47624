"""The click writer for another process: its own connection, the shared write lock."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Final

from server.store._codec import settings_from_json
from server.store._config import SqliteConfig
from server.store._exceptions import StoreError
from server.store._records import ClickOutcome, IntegrationSettings, NewClick
from server.store._settings import SettingsCache
from server.store.sqlite._connection import WriteLock, connect
from server.store.sqlite._intake import insert_clicks, integrations_of, prepare_clicks

# An intake worker only inserts: it touches the right edges of the tables and indexes and
# the paths down to them, which a few MB hold. The server's connection, which also reads
# for delivery, keeps the larger default; every worker's cache counts against the
# forwarder's memory budget.
_CACHE_KIB: Final = 8_000


class SqliteClickWriter:
    """Commits click batches on a connection of its own (an intake worker process)."""

    def __init__(self, config: SqliteConfig) -> None:
        self._config = config
        try:
            self._conn = connect(config, _CACHE_KIB)
            self._settings = SettingsCache()
            for ws, text in self._conn.execute("SELECT workspace_id, settings FROM integrations"):
                self._settings.set(ws, settings_from_json(text))
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {config.path}: {exc}") from None
        self._lock = WriteLock(config)

    def settings_for(self, workspace_id: str) -> IntegrationSettings | None:
        if self._settings.unknown((workspace_id,)):
            # A workspace registered since this worker last looked (possibly through another
            # process): read its settings now, not after its first commit — validation needs
            # them (e.g. default_phone_region).
            try:
                found = integrations_of(self._conn, (workspace_id,))
            except sqlite3.Error:
                return None
            self._settings.learn((workspace_id,), found)
        return self._settings.get(workspace_id)

    def _integrated(self, workspace_id: str) -> bool:
        return self._settings.get(workspace_id) is not None

    def take_clicks(self, clicks: Sequence[NewClick], now: float) -> list[ClickOutcome]:
        prepared = prepare_clicks(
            clicks, now, now + self._config.attribution_window_s, self._integrated
        )
        conn = self._conn
        try:
            with self._lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    outcomes, found = insert_clicks(conn, prepared)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise StoreError(f"could not commit: {exc}") from None
        self._settings.learn({c.workspace_id for c in clicks}, found)
        return outcomes

    def close(self) -> None:
        self._conn.close()
        self._lock.close()
