"""The cluster backend: a PostgreSQL database shared by any number of replicas."""

from server.store.postgres._store import PostgresStore

__all__ = ["PostgresStore"]
