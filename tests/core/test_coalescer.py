"""Concurrent single clicks share store commits, and each caller gets its own outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from server.intake._coalescer import Coalescer
from server.store import SqliteConfig, StoreError, open_store
from server.store._records import ClickOutcome, Identifiers, IntegrationSettings, NewClick


def click(click_id: str, email: str = "a@example.com") -> NewClick:
    return NewClick("ws", click_id, time.time(), Identifiers(email=email), b"")


async def test_concurrent_clicks_share_commits_and_keep_their_own_outcomes(tmp_path: Path) -> None:
    store = open_store(SqliteConfig(tmp_path / "f.db"))
    await store.open()
    try:
        await store.upsert_integration(
            "ws", "vault:v1:x", "pk_…x", 1, "acct", IntegrationSettings(), 0.0
        )
        commits: list[int] = []

        async def take(clicks: Sequence[NewClick]) -> list[ClickOutcome]:
            commits.append(len(clicks))
            return await store.take_clicks(clicks, time.time())

        coalescer = Coalescer(take)
        ids = [f"c-{i}" for i in range(200)] + ["c-7"]  # one repeat inside the burst
        outcomes = await asyncio.gather(
            *(coalescer.take(click(i, email="" if i == "c-3" else "a@example.com")) for i in ids)
        )
        assert sum(commits) == len(ids)
        assert len(commits) < 10, f"200 concurrent clicks took {len(commits)} commits"
        assert outcomes[3] is ClickOutcome.ANONYMOUS
        assert outcomes[7] is ClickOutcome.QUEUED
        assert outcomes[-1] is ClickOutcome.DUPLICATE
        assert outcomes.count(ClickOutcome.QUEUED) == 199
    finally:
        await store.close()


async def test_a_failed_commit_fails_every_caller_in_it() -> None:
    async def take(clicks: Sequence[NewClick]) -> list[ClickOutcome]:
        raise StoreError("disk full")

    coalescer: Coalescer[NewClick, ClickOutcome] = Coalescer(take)
    results = await asyncio.gather(*(coalescer.take(click(f"e-{i}")) for i in range(5)),
                                   return_exceptions=True)  # fmt: skip
    assert all(isinstance(r, StoreError) for r in results)
    with pytest.raises(StoreError):
        await coalescer.take(click("after"))  # and the coalescer still works afterwards
