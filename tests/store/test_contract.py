"""The store contract: every Store operation, run against both backends.

SQLite on a real file, PostgreSQL on a real server (tests/support/postgres.py). Two store
objects on one database stand for two replicas (or two processes sharing one SQLite file):
what one commits, the other must honour at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from server.store import LeaseLost, PostgresConfig, SqliteConfig, Store, StoreConfig, open_store
from server.store._records import (
    ClickOutcome,
    ConversionOutcome,
    EventKind,
    Identifiers,
    IntegrationSettings,
    IntegrationState,
    NewClick,
    NewConversion,
)

BACKENDS = ["sqlite", "postgres"]
SETTINGS = IntegrationSettings()
NOW = time.time()


@pytest.fixture(params=BACKENDS)
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if request.param == "sqlite":
        return SqliteConfig(tmp_path / "store.db")
    return PostgresConfig(request.getfixturevalue("postgres_url"), pool_size=4)


@pytest.fixture
async def open_stores(store_config: StoreConfig) -> AsyncIterator[Callable[[], Any]]:
    """Opens stores on the test's database (each one a "replica"); closes them afterwards."""
    opened: list[Store] = []

    async def make() -> Store:
        store = open_store(store_config)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_stores: Callable[[], Any]) -> Store:
    s: Store = await open_stores()
    return s


async def register(store: Store, ws: str = "ws", account: str = "acct") -> None:
    await store.upsert_integration(ws, f"vault:v1:{ws}", "pk_…abcd", 1, account, SETTINGS, NOW)


def click(click_id: str, ws: str = "ws", email: str = "ada@example.com") -> NewClick:
    return NewClick(ws, click_id, NOW - 5, Identifiers(email=email), f"payload-{click_id}".encode())


# -- integrations ----------------------------------------------------------------------------
async def test_integrations_are_created_replaced_listed_and_deleted(store: Store) -> None:
    record, existed = await store.upsert_integration(
        "ws-b", "vault:v1:one", "pk_…one1", 1, "acct-1", SETTINGS, NOW
    )
    assert not existed
    assert (record.ciphertext, record.account, record.state) == (
        "vault:v1:one",
        "acct-1",
        IntegrationState.ACTIVE,
    )
    _, existed = await store.upsert_integration(
        "ws-b", "vault:v1:two", "pk_…two2", 1, "acct-2", SETTINGS, NOW + 1
    )
    assert existed
    await register(store, "ws-a")
    assert [r.workspace_id for r in await store.list_integrations("", 10)] == ["ws-a", "ws-b"]
    assert [r.workspace_id for r in await store.list_integrations("ws-a", 10)] == ["ws-b"]
    got = await store.get_integration("ws-b")
    assert got is not None
    assert (got.ciphertext, got.account) == ("vault:v1:two", "acct-2")
    assert not await store.replace_ciphertext("ws-b", "vault:v1:stale", "vault:v2:x", 2, NOW)
    assert await store.replace_ciphertext("ws-b", "vault:v1:two", "vault:v2:two", 2, NOW)
    await store.set_account("ws-b", "vault:v1:two", "ignored")  # stale ciphertext: no change
    await store.set_account("ws-b", "vault:v2:two", "acct-3")
    got = await store.get_integration("ws-b")
    assert got is not None
    assert (got.key_version, got.account) == (2, "acct-3")
    await store.take_clicks([click("c1", "ws-b")], NOW)
    assert await store.delete_integration("ws-b") == 1  # its queued click dropped with it
    assert await store.delete_integration("ws-b") is None
    assert await store.get_integration("ws-b") is None


# -- intake ----------------------------------------------------------------------------------
async def test_click_fates(store: Store) -> None:
    await register(store)
    outcomes = await store.take_clicks(
        [
            click("c1"),
            click("c1"),  # again in the same batch
            click("c2", email=""),  # no identifier
            click("c3", ws="ws-none"),  # no integration
        ],
        NOW,
    )
    assert outcomes == [
        ClickOutcome.QUEUED,
        ClickOutcome.DUPLICATE,
        ClickOutcome.ANONYMOUS,
        ClickOutcome.NO_INTEGRATION,
    ]
    again = await store.take_clicks([click("c1"), click("c2", email="")], NOW)
    assert again == [ClickOutcome.DUPLICATE, ClickOutcome.DUPLICATE]
    counters = await store.delivery_counters("ws")
    assert (counters.queued, counters.anonymous_clicks) == (1, 1)
    [event] = await store.due_events("ws", NOW + 1, 10)
    assert (event.kind, event.source_id, event.payload) == (EventKind.CLICK, "c1", b"payload-c1")
    assert event.identifiers == Identifiers(email="ada@example.com")


async def test_conversion_attribution(store: Store) -> None:
    await register(store)
    await store.take_clicks([click("c1", email="clicker@example.com")], NOW)

    def conversion(cid: str, click_id: str, email: str = "") -> NewConversion:
        return NewConversion(
            "ws", cid, click_id, NOW, 10.0, "EUR", Identifiers(email=email), {"order": cid}
        )

    # The recorded click's identifiers win over those the caller passed.
    assert await store.take_conversion(conversion("v1", "c1", "other@example.com"), NOW) is (
        ConversionOutcome.QUEUED
    )
    assert await store.take_conversion(conversion("v1", "c1"), NOW) is ConversionOutcome.DUPLICATE
    assert await store.take_conversion(conversion("v2", "unknown"), NOW) is (
        ConversionOutcome.UNATTRIBUTED
    )
    assert await store.take_conversion(conversion("v3", "unknown", "x@example.com"), NOW) is (
        ConversionOutcome.QUEUED
    )
    other = NewConversion("ws-none", "v4", "c1", NOW, None, "", Identifiers(), {})
    assert await store.take_conversion(other, NOW) is ConversionOutcome.NO_INTEGRATION
    events = {e.source_id: e for e in await store.due_events("ws", NOW + 1, 10)}
    assert events["v1"].identifiers.email == "clicker@example.com"
    assert events["v1"].value == 10.0
    assert events["v1"].currency == "EUR"
    assert events["v3"].identifiers.email == "x@example.com"


async def test_replicas_agree_on_registration_and_removal(
    open_stores: Callable[[], Any],
) -> None:
    a: Store = await open_stores()
    b: Store = await open_stores()
    assert await b.take_clicks([click("c0")], NOW) == [ClickOutcome.NO_INTEGRATION]
    custom = IntegrationSettings(email_parameters=("subscriber",))
    await a.upsert_integration("ws-custom", "vault:v1:c", "pk_…abcd", 1, "acct", custom, NOW)
    # Before validating a click of a workspace it never saw, a replica reads its settings.
    assert b.settings_for("ws-custom") is None
    await b.load_settings(["ws-custom", "ws-none"])
    assert b.settings_for("ws-custom") == custom
    assert b.settings_for("ws-none") is None
    await register(a)
    # B never saw the registration in memory; its transaction does.
    assert await b.take_clicks([click("c1")], NOW) == [ClickOutcome.QUEUED]
    assert b.settings_for("ws") == SETTINGS  # and it learned the settings from it
    assert await a.delete_integration("ws") == 1
    assert await b.take_clicks([click("c2")], NOW) == [ClickOutcome.NO_INTEGRATION]
    assert b.settings_for("ws") is None
    assert (await a.delivery_counters("ws")).queued == 0


async def test_the_same_click_on_two_replicas_at_once_is_queued_once(
    open_stores: Callable[[], Any],
) -> None:
    a: Store = await open_stores()
    b: Store = await open_stores()
    await register(a)
    batch = [click(f"c{i}") for i in range(200)]
    first, second = await asyncio.gather(a.take_clicks(batch, NOW), b.take_clicks(batch, NOW))
    queued = [
        x is ClickOutcome.QUEUED or y is ClickOutcome.QUEUED
        for x, y in zip(first, second, strict=True)
    ]
    both = [
        x is ClickOutcome.QUEUED and y is ClickOutcome.QUEUED
        for x, y in zip(first, second, strict=True)
    ]
    assert all(queued)
    assert not any(both)
    assert (await a.delivery_counters("ws")).queued == 200


# -- leases and fencing ----------------------------------------------------------------------
async def test_a_lease_has_one_holder_and_fences_the_previous_one(
    open_stores: Callable[[], Any],
) -> None:
    a: Store = await open_stores()
    b: Store = await open_stores()
    await register(a)
    await a.take_clicks([click("c1"), click("c2")], NOW)
    [e1, e2] = await a.due_events("ws", NOW + 1, 10)

    held = await a.acquire_lease("account:acct", "replica-a", 0.5)
    assert held is not None
    assert await b.acquire_lease("account:acct", "replica-b", 30.0) is None
    renewed = await a.renew_lease(held)
    assert renewed is not None
    assert renewed.token == held.token
    assert renewed.expires_at >= held.expires_at
    await a.mark_delivered(held, "ws", [e1.event_id], NOW)

    await asyncio.sleep(0.7)  # past the TTL, on the database's clock
    taken = await b.acquire_lease("account:acct", "replica-b", 30.0)
    assert taken is not None
    assert taken.token > held.token
    # The paused holder is fenced: it can neither renew nor write.
    assert await a.renew_lease(held) is None
    with pytest.raises(LeaseLost):
        await a.mark_delivered(held, "ws", [e2.event_id], NOW)
    with pytest.raises(LeaseLost):
        await a.mark_retry(held, "ws", [e2.event_id], NOW + 60, "later", NOW)
    with pytest.raises(LeaseLost):
        await a.mark_failed(held, "ws", [e2.event_id], "bad", NOW)
    with pytest.raises(LeaseLost):
        await a.reject_key(held, "ws", "vault:v1:ws", "401", NOW)
    assert [e.event_id for e in await b.due_events("ws", NOW + 1, 10)] == [e2.event_id]
    await b.mark_delivered(taken, "ws", [e2.event_id], NOW)
    assert (await b.delivery_counters("ws")).delivered == 2

    await b.release_lease(taken)
    again = await a.acquire_lease("account:acct", "replica-a", 30.0)
    assert again is not None
    assert again.token > taken.token
    # Its own lease, re-acquired (say after a restart), gets a new token too.
    restarted = await a.acquire_lease("account:acct", "replica-a", 30.0)
    assert restarted is not None
    assert restarted.token > again.token
    with pytest.raises(LeaseLost):
        await a.mark_delivered(again, "ws", [], NOW)


# -- delivery bookkeeping --------------------------------------------------------------------
async def test_due_events_retries_failures_and_replays(store: Store) -> None:
    await register(store)
    await register(store, "ws-2", account="")
    await store.take_clicks([click(f"c{i}") for i in range(4)] + [click("d1", "ws-2")], NOW)
    due = await store.workspaces_with_due_events(NOW + 1)
    assert sorted((d.workspace_id, d.account) for d in due) == [("ws", "acct"), ("ws-2", "")]
    lease = await store.acquire_lease("account:acct", "me", 30.0)
    assert lease is not None
    events = await store.due_events("ws", NOW + 1, 10)
    assert [e.source_id for e in events] == ["c0", "c1", "c2", "c3"]
    ids = [e.event_id for e in events]
    await store.mark_delivered(lease, "ws", ids[:1], NOW)
    await store.mark_retry(lease, "ws", ids[1:2], NOW + 3600, "transient: 503", NOW)
    await store.mark_retry(lease, "ws", ids[2:3], NOW + 3600, "rate_limited", NOW, False)
    await store.mark_failed(lease, "ws", ids[3:], "Klaviyo rejected the event: bad", NOW)
    assert await store.due_events("ws", NOW + 1, 10) == []
    later = {e.source_id: e.attempts for e in await store.due_events("ws", NOW + 3601, 10)}
    assert later == {"c1": 1, "c2": 0}
    counters = await store.delivery_counters("ws")
    assert (counters.queued, counters.delivered, counters.failed) == (2, 1, 1)
    assert counters.last_error == "Klaviyo rejected the event: bad"
    [failed] = await store.list_failed("ws", 0, 10)
    assert (failed.source_id, failed.kind, failed.attempts) == ("c3", EventKind.CLICK, 1)
    assert await store.list_failed("ws", failed.event_id, 10) == []
    assert await store.replay_failed("ws", [failed.event_id, 999_999], NOW) == 1
    assert await store.replay_failed("ws", None, NOW) == 0
    assert [e.source_id for e in await store.due_events("ws", NOW + 1, 10)] == ["c3"]
    assert await store.outbox_depth() == (4, 0)

    assert await store.reject_key(lease, "ws", "vault:v1:other", "401", NOW) is False
    assert await store.reject_key(lease, "ws", "vault:v1:ws", "Klaviyo answered 401", NOW)
    record = await store.get_integration("ws")
    assert record is not None
    assert record.state is IntegrationState.KEY_REJECTED
    assert [d.workspace_id for d in await store.workspaces_with_due_events(NOW + 4000)] == ["ws-2"]
    await register(store)  # a new key makes it active and its held events due at once
    assert "ws" in [d.workspace_id for d in await store.workspaces_with_due_events(NOW + 1)]


async def test_key_states_unverified_delivers_and_checks_settle_it(
    open_stores: Callable[[], Any],
) -> None:
    store, other = await open_stores(), await open_stores()
    record, _ = await store.upsert_integration(
        "ws-u", "vault:v1:u", "pk_…uuuu", 1, "acct-u", SETTINGS, NOW,
        state=IntegrationState.UNVERIFIED, state_reason="Klaviyo could not confirm the key",
    )  # fmt: skip
    assert (record.state, record.state_reason) == (
        IntegrationState.UNVERIFIED,
        "Klaviyo could not confirm the key",
    )
    await other.take_clicks([click("u1", "ws-u")], NOW)
    # Unverified integrations are delivered, like active ones, seen from either replica.
    assert [d.workspace_id for d in await other.workspaces_with_due_events(NOW + 1)] == ["ws-u"]
    # Compare-and-set: a stale ciphertext or a state that moved on changes nothing.
    active, unverified = IntegrationState.ACTIVE, IntegrationState.UNVERIFIED
    assert not await store.set_key_state("ws-u", "vault:v1:old", active, "", NOW)
    assert not await store.set_key_state(
        "ws-u", "vault:v1:u", active, "", NOW, only_from=IntegrationState.KEY_REJECTED
    )
    assert await other.set_key_state("ws-u", "vault:v1:u", active, "", NOW, only_from=unverified)
    got = await store.get_integration("ws-u")
    assert got is not None
    assert (got.state, got.state_reason) == (active, "")
    # A re-check that finds the key refused holds the events ...
    assert await store.set_key_state(
        "ws-u", "vault:v1:u", IntegrationState.KEY_REJECTED, "key check: 403", NOW
    )
    assert await other.workspaces_with_due_events(NOW + 1) == []
    lease = await store.acquire_lease("account:acct-u", "me", 30.0)
    assert lease is not None
    [event] = await store.due_events("ws-u", NOW + 1, 10)
    await store.mark_retry(lease, "ws-u", [event.event_id], NOW + 3600, "transient", NOW)
    # ... and one that finds it valid again makes them due at once.
    assert await other.set_key_state("ws-u", "vault:v1:u", active, "", NOW + 2)
    assert [e.source_id for e in await store.due_events("ws-u", NOW + 2, 10)] == ["u1"]
    # A new key registered as active replaces the state and its reason.
    record, _ = await store.upsert_integration(
        "ws-u", "vault:v1:new", "pk_…nnnn", 1, "acct-u", SETTINGS, NOW
    )
    assert (record.state, record.state_reason) == (active, "")


async def test_prune_forgets_expired_clicks_and_conversions(store: Store) -> None:
    await register(store)
    await store.take_clicks([click("c1")], NOW)
    conversion = NewConversion("ws", "v1", "c1", NOW, None, "", Identifiers(), {})
    await store.take_conversion(conversion, NOW)
    assert await store.prune(NOW) == 0
    assert await store.prune(NOW + 91 * 86400) == 2
    # Forgotten: the same ids are new again.
    assert await store.take_clicks([click("c1")], NOW) == [ClickOutcome.QUEUED]


def test_the_database_password_never_shows() -> None:
    config = PostgresConfig("postgresql://forwarder:s3cr3t-pw@db.internal:5432/forwarder")
    assert "s3cr3t-pw" not in repr(config)
    assert config.redacted_url() == "postgresql://forwarder:***@db.internal:5432/forwarder"
