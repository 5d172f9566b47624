"""The move from SQLite to PostgreSQL keeps every queued and failed event, and refuses to
overwrite a database that holds data."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.store import PostgresConfig, SqliteConfig, StoreError, open_store
from server.store._move import move_sqlite_to_postgres
from server.store._records import (
    AuditEntry,
    ClickOutcome,
    ConversionOutcome,
    Identifiers,
    IntegrationSettings,
    NewClick,
    NewConversion,
)

NOW = time.time()
SETTINGS = IntegrationSettings(click_metric_name="Clicked Through", backfill_after_s=600.0)


def click(click_id: str, ws: str = "ws-1") -> NewClick:
    return NewClick(ws, click_id, NOW - 5, Identifiers(email=f"{click_id}@example.com"), b"p")


async def test_move_keeps_queued_and_failed_events_the_click_index_and_counters(
    tmp_path: Path, postgres_url: str
) -> None:
    source = open_store(SqliteConfig(tmp_path / "forwarder.db"))
    await source.open()
    for ws in ("ws-1", "ws-2"):
        await source.upsert_integration(ws, f"vault:v1:{ws}", "pk_…abcd", 1, "acct", SETTINGS, NOW)
    await source.take_clicks([click(f"c{i}") for i in range(5)] + [click("d1", "ws-2")], NOW)
    await source.take_clicks([NewClick("ws-1", "anon", NOW, Identifiers(), b"")], NOW)
    await source.take_conversion(
        NewConversion("ws-1", "v1", "c0", NOW, 5.0, "USD", Identifiers(), {"order": 1}), NOW
    )
    lease = await source.acquire_lease("account:acct", "old-host", 30.0)
    assert lease is not None
    events = await source.due_events("ws-1", NOW + 1, 100)
    ids = [e.event_id for e in events]
    await source.mark_delivered(lease, "ws-1", ids[:1], NOW)
    await source.mark_failed(lease, "ws-1", ids[1:2], "Klaviyo rejected the event: bad", NOW)
    await source.mark_retry(lease, "ws-1", ids[2:3], NOW + 30, "transient: 503", NOW)
    audit = AuditEntry(
        NOW, "register", "ws-1", "ops", "admin", "", '{"key_fingerprint": "pk_…abcd"}', "OK"
    )
    await source.record_audit(audit)
    before = {ws: await source.delivery_counters(ws) for ws in ("ws-1", "ws-2")}
    before_due = await source.due_events("ws-1", NOW + 60, 100)
    await source.close()

    copied = await move_sqlite_to_postgres(
        SqliteConfig(tmp_path / "forwarder.db"), PostgresConfig(postgres_url)
    )
    assert copied == {
        "integrations": 2,
        "outbox": 6,
        "clicks": 7,
        "conversions": 1,
        "audit_events": 1,
    }

    target = open_store(PostgresConfig(postgres_url))
    await target.open()
    try:
        [moved] = await target.list_audit(None, None, None, None, 10)
        assert moved.entry == audit
        assert await target.record_audit(audit) == moved.audit_id + 1  # ids keep growing
        record = await target.get_integration("ws-1")
        assert record is not None
        assert (record.ciphertext, record.settings, record.account) == (
            "vault:v1:ws-1",
            SETTINGS,
            "acct",
        )
        for ws in ("ws-1", "ws-2"):
            assert await target.delivery_counters(ws) == before[ws]
        after_due = await target.due_events("ws-1", NOW + 60, 100)
        assert after_due == before_due  # same ids, attempts, payloads, identifiers
        [failed] = await target.list_failed("ws-1", 0, 10)
        assert failed.event_id == ids[1]
        assert await target.replay_failed("ws-1", [failed.event_id], NOW) == 1
        # The click index and conversion ids moved: resends are duplicates, and a late
        # conversion is attributed to the moved click.
        assert await target.take_clicks([click("c3"), click("new")], NOW) == [
            ClickOutcome.DUPLICATE,
            ClickOutcome.QUEUED,
        ]
        late = NewConversion("ws-1", "v2", "c4", NOW, None, "", Identifiers(), {})
        assert await target.take_conversion(late, NOW) is ConversionOutcome.QUEUED
        again = NewConversion("ws-1", "v1", "c0", NOW, None, "", Identifiers(), {})
        assert await target.take_conversion(again, NOW) is ConversionOutcome.DUPLICATE
        # New events get ids after the moved ones.
        newest = max(e.event_id for e in await target.due_events("ws-1", NOW + 60, 100))
        assert newest > max(ids)
    finally:
        await target.close()

    with pytest.raises(StoreError, match="not empty"):
        await move_sqlite_to_postgres(
            SqliteConfig(tmp_path / "forwarder.db"), PostgresConfig(postgres_url)
        )


async def test_move_of_a_missing_file_is_refused(tmp_path: Path, postgres_url: str) -> None:
    with pytest.raises(StoreError, match="no SQLite store"):
        await move_sqlite_to_postgres(
            SqliteConfig(tmp_path / "missing.db"), PostgresConfig(postgres_url)
        )
