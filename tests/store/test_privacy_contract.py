"""The store contract of issue 11: erasure of a person and selective replay, on both backends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from server.store import PostgresConfig, SqliteConfig, Store, StoreConfig
from server.store._records import (
    AuditEntry,
    ConversionOutcome,
    ErasureTargets,
    EventKind,
    FailedSelection,
    Identifiers,
    NewClick,
    NewConversion,
)
from tests.store import test_contract as contract
from tests.store.test_contract import NOW, register

# The contract's fixtures (both backends), used here by name.
store_config = contract.store_config
open_stores = contract.open_stores
store = contract.store

SECRET_EMAIL = "Erase.Me-7f3a@Example.com"
DAY = 86400.0


def person_click(click_id: str, ws: str = "ws", **ids: str) -> NewClick:
    identifiers = Identifiers(**ids)
    payload = f"click {click_id} to {identifiers.email} {identifiers.phone_number}".encode()
    return NewClick(ws, click_id, NOW - 5, identifiers, payload)


async def _fail(store: Store, ws: str, event_ids: list[int], error: str, at: float) -> None:
    lease = await store.acquire_lease(f"test:{ws}", "me", 30.0)
    assert lease is not None
    await store.mark_failed(lease, ws, event_ids, error, at)


async def test_erasure_deletes_index_entries_and_undelivered_events(store: Store) -> None:
    await register(store)
    await register(store, "ws-2", account="acct-2")
    await store.take_clicks(
        [
            person_click("queued", email=SECRET_EMAIL),
            person_click("lower", email=SECRET_EMAIL.lower()),  # ASCII case differs
            person_click("delivered", phone_number="+14155550100"),
            person_click("failed", kx="abcDEF123.Xy12Zz"),
            person_click("ext", external_id="crm-42"),
            person_click("other", email="someone.else@example.com"),
            person_click("elsewhere", ws="ws-2", email=SECRET_EMAIL),
        ],
        NOW,
    )
    events = {e.source_id: e.event_id for e in await store.due_events("ws", NOW + 1, 50)}
    lease = await store.acquire_lease("account:acct", "me", 30.0)
    assert lease is not None
    await store.mark_delivered(lease, "ws", [events["delivered"]], NOW)
    await store.mark_failed(lease, "ws", [events["failed"]], "Klaviyo 400: bad", NOW)
    conversion = NewConversion("ws", "v-before", "queued", NOW, None, "", Identifiers(), {})
    assert await store.take_conversion(conversion, NOW) is ConversionOutcome.QUEUED

    targets = ErasureTargets(
        emails=(SECRET_EMAIL.upper(),),
        phone_numbers=("+14155550100",),
        external_ids=("crm-42",),
        kxs=("abcDEF123.Xy12Zz",),
    )
    counts = await store.erase_identifiers("ws", targets)
    # Index: queued, lower, delivered, failed, ext. Outbox: queued, lower, ext, v-before
    # (queued, carrying the click's email) and the failed one; the delivered one was gone.
    assert (counts.clicks, counts.queued_events, counts.failed_events) == (5, 4, 1)
    left = {e.source_id for e in await store.due_events("ws", NOW + 1, 50)}
    assert left == {"other"}
    assert await store.list_failed("ws", 0, 10) == []
    # The other workspace is untouched by a one-workspace erasure...
    assert [e.source_id for e in await store.due_events("ws-2", NOW + 1, 10)] == ["elsewhere"]
    # ...and a conversion citing an erased click finds no profile.
    later = NewConversion("ws", "v-after", "delivered", NOW, 5.0, "EUR", Identifiers(), {})
    assert await store.take_conversion(later, NOW) is ConversionOutcome.UNATTRIBUTED
    # Erasure is idempotent, and "every workspace" reaches ws-2.
    again = await store.erase_identifiers(None, targets)
    assert (again.clicks, again.queued_events, again.failed_events) == (1, 1, 0)
    assert await store.due_events("ws-2", NOW + 1, 10) == []
    # Clicks arriving after the erasure are new data.
    taken = await store.take_clicks([person_click("queued", email=SECRET_EMAIL)], NOW)
    assert [o.value for o in taken] == ["queued"]


async def test_erasure_leaves_no_copy_in_the_sqlite_files(tmp_path: Path) -> None:
    from server.store import open_store

    config: StoreConfig = SqliteConfig(tmp_path / "store.db")
    s = open_store(config)
    await s.open()
    try:
        await register(s)
        filler = [person_click(f"f{i}", email=f"filler{i}@example.com") for i in range(300)]
        await s.take_clicks([*filler, person_click("mine", email=SECRET_EMAIL)], NOW)
        events = await s.due_events("ws", NOW + 1, 1000)
        lease = await s.acquire_lease("account:acct", "me", 30.0)
        assert lease is not None
        # Delivered events are deleted the ordinary way; their bytes must not linger either.
        await s.mark_delivered(lease, "ws", [e.event_id for e in events[:150]], NOW)

        def files_holding(marker: bytes) -> list[str]:
            found = []
            for suffix in ("", "-wal", "-shm"):
                path = Path(f"{tmp_path / 'store.db'}{suffix}")
                if path.exists() and marker in path.read_bytes():
                    found.append(path.name)
            return found

        needle = SECRET_EMAIL.encode()
        assert files_holding(needle)  # the test can see it before the erasure
        counts = await s.erase_identifiers("ws", ErasureTargets(emails=(SECRET_EMAIL,)))
        assert (counts.clicks, counts.queued_events) == (1, 1)
        assert files_holding(needle) == []
        assert files_holding(b"filler299@example.com")  # ...and still sees what was kept
    finally:
        await s.close()


async def test_replay_selects_by_time_error_and_kind_with_a_dry_run(store: Store) -> None:
    await register(store)
    await store.take_clicks([person_click(f"c{i}", email="a@example.com") for i in range(4)], NOW)
    for cid in ("v0", "v1"):
        conversion = NewConversion("ws", cid, "c0", NOW, None, "", Identifiers(), {})
        await store.take_conversion(conversion, NOW)
    ids = {e.source_id: e.event_id for e in await store.due_events("ws", NOW + 1, 50)}
    await _fail(store, "ws", [ids["c0"], ids["v0"]], "Klaviyo 400: invalid phone", NOW - 7200)
    await _fail(store, "ws", [ids["c1"]], "expired: retries ran out", NOW - 3600)
    await _fail(store, "ws", [ids["c2"], ids["v1"]], "Klaviyo 400: metric too long", NOW - 60)

    async def replay(selection: FailedSelection, dry_run: bool = True) -> int:
        return await store.replay_failed("ws", None, NOW, selection=selection, dry_run=dry_run)

    window = FailedSelection(failed_after=NOW - 4000, failed_before=NOW - 100)
    assert await replay(window) == 1  # c1 only
    assert await replay(FailedSelection(error_contains="KLAVIYO 400")) == 4
    assert await replay(FailedSelection(kind=EventKind.CONVERSION)) == 2
    assert await replay(FailedSelection(error_contains="klaviyo", kind=EventKind.CLICK)) == 2
    assert await replay(FailedSelection(failed_before=NOW - 3600)) == 2  # before is exclusive
    assert len(await store.list_failed("ws", 0, 10)) == 5  # dry runs changed nothing

    assert await replay(FailedSelection(failed_after=NOW - 120), dry_run=False) == 2
    requeued = {e.source_id: e for e in await store.due_events("ws", NOW + 1, 50)}
    assert set(requeued) == {"c2", "c3", "v1"}  # c3 was never failed
    # Replayed events keep their unique_id (source id) and the time they happened.
    assert requeued["v1"].occurred_at == NOW
    assert requeued["c2"].attempts == 0
    # Ids and filters combine: of c0 and c1 only the conversion-free click c1 is "expired".
    both = [ids["c0"], ids["c1"]]
    sel = FailedSelection(error_contains="expired")
    assert await store.replay_failed("ws", both, NOW, selection=sel) == 1
    assert {r.source_id for r in await store.list_failed("ws", 0, 10)} == {"c0", "v0"}


async def test_the_audit_trail_appends_lists_newest_first_and_prunes(
    store: Store, store_config: StoreConfig
) -> None:
    def entry(at: float, ws: str, action: str = "register") -> AuditEntry:
        return AuditEntry(at, action, ws, "ops-token", "admin", "CN=ops", '{"n": 1}', "OK")

    ids = [
        await store.record_audit(entry(NOW - 500 * DAY, "ws-a")),
        await store.record_audit(entry(NOW - 2 * DAY, "ws-a", "remove")),
        await store.record_audit(entry(NOW - DAY, "ws-b")),
        await store.record_audit(entry(NOW, "", "erase")),
    ]
    assert ids == sorted(ids)
    everything = await store.list_audit(None, None, None, None, 10)
    assert [r.audit_id for r in everything] == ids[::-1]
    assert everything[0].entry == entry(NOW, "", "erase")
    of_a = await store.list_audit("ws-a", None, None, None, 10)
    assert [r.entry.action for r in of_a] == ["remove", "register"]
    window = await store.list_audit(None, NOW - 3 * DAY, NOW - DAY / 2, None, 10)
    assert [r.audit_id for r in window] == [ids[2], ids[1]]  # since inclusive, until exclusive
    page = await store.list_audit(None, None, None, ids[2], 2)
    assert [r.audit_id for r in page] == [ids[1], ids[0]]
    # Append-only: the database itself refuses to change an entry.
    with pytest.raises(Exception, match="append-only"):
        await _raw_update(store_config)
    assert await store.prune_audit(NOW - 400 * DAY) == 1
    assert [r.audit_id for r in await store.list_audit(None, None, None, None, 10)] == ids[:0:-1]


async def _raw_update(config: StoreConfig) -> None:
    sql = "UPDATE audit_events SET outcome = 'tampered'"
    if isinstance(config, SqliteConfig):
        with sqlite3.connect(config.path) as db:
            db.execute(sql)
        return
    assert isinstance(config, PostgresConfig)
    async with await psycopg.AsyncConnection.connect(config.url, autocommit=True) as conn:
        await conn.execute(sql)
