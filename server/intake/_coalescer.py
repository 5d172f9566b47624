"""Commits the clicks of concurrent ForwardClick calls together.

Each unary call alone would cost a commit of its own (a hand-over to the store thread or a
worker process, and half a dozen statements). Calls that arrive while a commit is in flight
wait for it to finish and then go into the next commit together, so under load one commit
carries many clicks, and when idle a click is committed at once.

Under load a commit may also linger: when the previous commit carried more than one item
(so calls are arriving concurrently), the next one waits ``linger_s`` for more to join. A
commit's fixed cost (an fsync, a transaction) is far larger than one click's, so this trades
a millisecond or two of latency under load for fewer commits; a lone caller never waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Generic, TypeVar

MAX_BATCH: Final = 1000

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class Coalescer(Generic[Item, Outcome]):
    """Group commit for single items: ``take_many`` gets all that waited, one outcome each."""

    def __init__(
        self,
        take_many: Callable[[Sequence[Item]], Awaitable[Sequence[Outcome]]],
        max_batch: int = MAX_BATCH,
        linger_s: float = 0.0,
    ) -> None:
        self._take_many = take_many
        self._max_batch = max_batch
        self._linger_s = linger_s
        self._last_size = 0
        self._pending: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def take(self, item: Item) -> Outcome:
        """Commit ``item`` (with whatever else is waiting); its outcome once durable."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()
        self._pending.append((item, done))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        try:
            # Yield once so calls already scheduled in this loop iteration join the first commit.
            await asyncio.sleep(0)
            while self._pending:
                if self._linger_s and self._last_size > 1 and len(self._pending) < self._max_batch:
                    await asyncio.sleep(self._linger_s)
                batch = self._pending[: self._max_batch]
                self._last_size = len(batch)
                del self._pending[: self._max_batch]
                try:
                    outcomes = await self._take_many([item for item, _ in batch])
                except Exception as exc:  # handed to every caller; each answers for itself
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for (_, done), outcome in zip(batch, outcomes, strict=True):
                    # A caller whose deadline passed is gone; its click is committed anyway
                    # (click ids are idempotent, a retry answers DUPLICATE).
                    if not done.done():
                        done.set_result(outcome)
        finally:
            self._flusher = None
