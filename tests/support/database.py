"""Read what a forwarder stored, whichever backend it runs on: for checks from outside.

Tests assert on rows (an ack must mean a committed row; a removal must leave none), so they
read the database directly, never through the forwarder. Statements use ``?`` placeholders
and plain SQL both backends understand.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import psycopg


class Database:
    """A forwarder's database: a SQLite file or a PostgreSQL URL."""

    def __init__(self, sqlite_path: Path | None = None, postgres_url: str = "") -> None:
        if (sqlite_path is None) == (not postgres_url):
            raise ValueError("a SQLite path or a PostgreSQL URL, one of them")
        self.sqlite_path = sqlite_path
        self.postgres_url = postgres_url

    @property
    def backend(self) -> str:
        return "postgres" if self.postgres_url else "sqlite"

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Every row ``sql`` selects."""
        if self.sqlite_path is not None:
            with sqlite3.connect(self.sqlite_path) as db:
                return list(db.execute(sql, params).fetchall())
        with psycopg.connect(self.postgres_url, autocommit=True) as conn:
            # Without parameters, a "%" (LIKE patterns) is not a placeholder.
            return list(conn.execute(sql.replace("?", "%s"), params or None).fetchall())

    def value(self, sql: str, *params: Any) -> Any:
        """The first column of the only row ``sql`` selects."""
        [row] = self.rows(sql, *params)
        return row[0]
