"""``elido-forwarder check`` for the SQLite store: a read-only look, nothing created."""

from __future__ import annotations

import os
import sqlite3

from server.store._config import SqliteConfig


def check_sqlite(config: SqliteConfig) -> list[str]:
    """The store can be opened for writing (read-only look: no file is created or migrated)."""
    path = config.path
    if path.exists():
        if not path.is_file():
            return [f"FORWARDER_DB_PATH: {path} is not a file"]
        # WAL mode writes -wal and -shm files beside the database: its folder must be writable.
        for target in (path, path.parent):
            if not os.access(target, os.R_OK | os.W_OK):
                return [f"FORWARDER_DB_PATH: {target} is not writable by this user"]
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            return [f"FORWARDER_DB_PATH: {path} is not a usable SQLite database ({exc})"]
        return []
    # A new database: the nearest existing folder must let us create the rest.
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"FORWARDER_DB_PATH: cannot create {path}: {parent} is not a writable folder"]
    return []
