"""The cluster backend: a PostgreSQL database shared by any number of replicas."""

from server.store.postgres._store import PostgresStore
from server.store.postgres._writer import PostgresClickWriter

__all__ = ["PostgresClickWriter", "PostgresStore"]
