"""The test PostgreSQL itself: production durability, unprivileged, one database per test, and
data that survives a clean stop and a crash (SIGKILL of every server process)."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import PostgresServer


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


def test_server_runs_with_production_durability(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as conn:
        settings = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "full_page_writes", "server_version_num")
        }
    assert settings["fsync"] == "on"
    assert settings["synchronous_commit"] == "on"
    assert settings["full_page_writes"] == "on"
    assert int(settings["server_version_num"]) >= 140000


def test_server_never_runs_as_root(postgres_server: PostgresServer) -> None:
    pid = int((postgres_server.data_dir / "postmaster.pid").read_text().split()[0])
    assert _uid_of(pid) != 0
    assert _uid_of(pid) == (os.geteuid() if os.geteuid() != 0 else postgres_server.user.pw_uid)  # type: ignore[union-attr]


def test_each_test_gets_a_fresh_empty_database(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        ).fetchone()
        name = conn.execute("SELECT current_database()").fetchone()
    assert tables == (0,)
    assert name is not None and postgres_url.endswith("/" + name[0])
    second = postgres_server.create_database()
    try:
        assert second != postgres_url
    finally:
        postgres_server.drop_database(second.rsplit("/", 1)[1])


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_committed_rows_survive_a_restart(
    postgres_server: PostgresServer, postgres_url: str, how: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE clicks (click_id TEXT PRIMARY KEY, payload BYTEA NOT NULL)")
        conn.execute("INSERT INTO clicks VALUES ('c-1', '\\x01'), ('c-2', '\\x02')")
    # A transaction still open when the server goes away must leave nothing behind.
    pending = psycopg.connect(postgres_url)
    pending.execute("INSERT INTO clicks VALUES ('c-uncommitted', '\\x03')")

    getattr(postgres_server, how)()
    assert not postgres_server.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(postgres_url, connect_timeout=2)
    with pytest.raises(psycopg.OperationalError):
        pending.commit()
    pending.close()

    postgres_server.start()
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT click_id, payload FROM clicks ORDER BY click_id").fetchall()
    assert rows == [("c-1", b"\x01"), ("c-2", b"\x02")]
