"""Commits the clicks of concurrent ForwardClick calls together.

Each unary call alone would cost a store operation of its own (a thread hop and half a
dozen statements). Calls that arrive while a commit is in flight wait for it to finish and
then go into the next commit together, so under load one store operation carries many
clicks, and when idle a click is committed at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from server.store._records import ClickOutcome, NewClick

MAX_BATCH: Final = 1000

TakeClicks = Callable[[Sequence[NewClick], float], Awaitable[list[ClickOutcome]]]


class ClickCoalescer:
    """Group commit for single clicks."""

    def __init__(self, take: TakeClicks, max_batch: int = MAX_BATCH) -> None:
        self._take = take
        self._max_batch = max_batch
        self._pending: list[tuple[NewClick, asyncio.Future[ClickOutcome]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def take(self, click: NewClick) -> ClickOutcome:
        """Commit ``click`` (with whatever else is waiting); its outcome once durable."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[ClickOutcome] = loop.create_future()
        self._pending.append((click, done))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        try:
            # Yield once so calls already scheduled in this loop iteration join the first commit.
            await asyncio.sleep(0)
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    outcomes = await self._take([click for click, _ in batch], time.time())
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
