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


async def _later(coalescer: Coalescer[str, str], item: str, after_s: float) -> str:
    await asyncio.sleep(after_s)
    return await coalescer.take(item)


@pytest.mark.parametrize("linger_s", [0.5, 0.0])
async def test_under_load_a_commit_waits_briefly_for_more_and_a_lone_call_does_not(
    linger_s: float,
) -> None:
    commits: list[list[str]] = []

    async def take(items: Sequence[str]) -> list[str]:
        commits.append(list(items))
        return list(items)

    coalescer: Coalescer[str, str] = Coalescer(take, linger_s=linger_s)
    assert await coalescer.take("alone") == "alone"
    assert commits == [["alone"]]  # nothing before it carried two: committed at once

    await asyncio.gather(coalescer.take("a"), coalescer.take("b"))
    assert commits[-1] == ["a", "b"]

    # The last commit carried two, so the next one lingers: a call arriving 50 ms later
    # still joins it. Without a linger it gets a commit of its own.
    await asyncio.gather(coalescer.take("c"), _later(coalescer, "d", 0.05))
    assert commits[-2:] == ([["a", "b"], ["c", "d"]] if linger_s else [["c"], ["d"]])
