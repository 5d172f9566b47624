"""The embedded backend: one SQLite file in WAL mode (see :mod:`._store`)."""

from server.store.sqlite._store import SqliteStore
from server.store.sqlite._writer import SqliteClickWriter

__all__ = ["SqliteClickWriter", "SqliteStore"]
