"""Persistence: integrations, the delivery outbox and the click index."""

from server.store._exceptions import StoreError
from server.store._interface import Store
from server.store._sqlite import SqliteConfig, SqliteStore

__all__ = ["SqliteConfig", "SqliteStore", "Store", "StoreError"]
