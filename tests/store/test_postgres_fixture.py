"""The test PostgreSQL itself: production durability, unprivileged, one database per test, and
data that survives a clean stop and a crash (SIGKILL of every server process)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import asyncpg
import pytest

from tests.support.postgres import PostgresServer


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for pid {pid}")


async def test_server_runs_with_production_durability(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("fsync", "synchronous_commit", "full_page_writes", "server_version_num")
        }
    finally:
        await conn.close()
    assert settings["fsync"] == "on"
    assert settings["synchronous_commit"] == "on"
    assert settings["full_page_writes"] == "on"
    assert int(settings["server_version_num"]) >= 140000


def test_server_never_runs_as_root(postgres_server: PostgresServer) -> None:
    uid = _uid_of(postgres_server.pid)
    assert uid != 0
    if os.geteuid() == 0:
        assert postgres_server.user is not None
        assert uid == postgres_server.user.pw_uid
    else:
        assert uid == os.geteuid()


async def test_each_test_gets_a_fresh_empty_database(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables"
            " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
        )
        name = await conn.fetchval("SELECT current_database()")
    finally:
        await conn.close()
    assert tables == 0
    assert postgres_url.endswith("/" + name)
    second = postgres_server.create_database()
    try:
        assert second != postgres_url
    finally:
        postgres_server.drop_database(second.rsplit("/", 1)[1])


@pytest.mark.parametrize("how", ["stop", "kill"])
async def test_committed_rows_survive_a_restart(
    postgres_server: PostgresServer, postgres_url: str, how: str
) -> None:
    conn = await asyncpg.connect(postgres_url)
    await conn.execute("CREATE TABLE clicks (click_id TEXT PRIMARY KEY, payload BYTEA NOT NULL)")
    await conn.executemany(
        "INSERT INTO clicks VALUES ($1, $2)", [("c-1", b"\x01"), ("c-2", b"\x02")]
    )
    # A transaction still open when the server goes away must leave nothing behind.
    pending = conn.transaction()
    await pending.start()
    await conn.execute("INSERT INTO clicks VALUES ('c-uncommitted', '\\x03')")

    # Returns once every server process has exited.
    await asyncio.to_thread(getattr(postgres_server, how))
    assert not postgres_server.running
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(postgres_url, timeout=2)
    conn.terminate()  # its open transaction died with the server

    postgres_server.start()
    conn = await asyncpg.connect(postgres_url)
    try:
        rows = await conn.fetch("SELECT click_id, payload FROM clicks ORDER BY click_id")
    finally:
        await conn.close()
    assert [tuple(r) for r in rows] == [("c-1", b"\x01"), ("c-2", b"\x02")]
