"""Intake worker processes: StreamClicks batches validated and committed off the main process.

One CPython process runs Python on one core at a time, and per click the validation and the
store's bookkeeping cost far more than gRPC does. So the server hands each StreamClicks batch
— still serialized — to a small pool of worker processes. A worker parses it, validates every
click, commits the valid ones in one transaction through the store's click writer (its own
connection) and returns the outcomes. The main process acks only after the worker returned,
i.e. after the commit: invariant 2 holds as in-process.

Group commit: the batches that reach a worker's lane while it is committing go into its next
transaction together (up to :data:`MAX_GROUP` of them), in the order they came. A commit's
fsync is the largest single cost of a batch, so under load one fsync serves several batches,
and an idle lane still commits a lone batch at once. Each batch keeps its own outcomes, and
none is acked before the commit that holds it.

Whether a click has an integration is decided inside the commit's transaction (by the
store), so a worker never queues a click for an integration removed by any process.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Final

import structlog
from elido.forwarder.v1 import forwarder_pb2 as pb

from server.intake._batch import BatchOutcome, validate_batch
from server.intake._coalescer import Coalescer
from server.store import ClickWriter, StoreConfig, StoreError, open_click_writer

_log = structlog.get_logger(__name__)


class _Worker:
    """A worker process's click writer."""

    def __init__(self, config: StoreConfig) -> None:
        self.writer: ClickWriter = open_click_writer(config)

    def take(self, raws: Sequence[tuple[bytes, float]]) -> list[BatchOutcome]:
        settings_for = self.writer.settings_for
        batches = [
            validate_batch(pb.StreamClicksRequest.FromString(raw), settings_for, now)
            for raw, now in raws
        ]
        # One transaction for the group: the clicks in sending order, so that of two with one
        # id the first sent is queued, across batches as within one.
        valid = [click for batch in batches for click in batch.valid]
        outcomes = self.writer.take_clicks(valid, raws[-1][1]) if valid else []
        finished, start = [], 0
        for batch in batches:
            end = start + len(batch.valid)
            finished.append(batch.finish(outcomes[start:end]))
            start = end
        return finished


# Batches per transaction at most: a few thousand clicks, one fsync, a bounded wait.
MAX_GROUP: Final = 8
_worker: _Worker | None = None
_PARENT_CHECK_S: Final = 0.5


def _init(config: StoreConfig) -> None:
    global _worker  # one per worker process, set by the pool's initializer
    _worker = _Worker(config)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    # A worker blocks reading its task pipe, and holds that pipe's write end too, so it never
    # sees EOF when the server dies (SIGKILL, out of memory). Without this it would live on,
    # holding the database open. An unacked batch it was committing is simply rolled back.
    while os.getppid() == parent:
        time.sleep(_PARENT_CHECK_S)
    os._exit(0)


def _take(raws: Sequence[tuple[bytes, float]]) -> list[BatchOutcome]:
    if _worker is None:  # pragma: no cover - the initializer always runs first
        raise StoreError("intake worker not initialised")
    return _worker.take(raws)


def _ready() -> int:
    return os.getpid()


class IntakeWorkers:
    """The intake worker processes, as the gRPC service uses them.

    Each worker is its own single-process pool, so the batches given to it run in the order
    given. A stream keeps one worker (its lane) for its whole life: its batches commit in the
    order they were sent — the first of two clicks with one id is the one queued — while
    different streams run in parallel on different workers.
    """

    def __init__(self, config: StoreConfig, processes: int) -> None:
        self._config = config
        self._pools: list[ProcessPoolExecutor] = []
        self._lanes: list[Coalescer[tuple[bytes, float], BatchOutcome]] = []
        self._processes = processes
        self._next_lane = 0

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: forking a process that runs gRPC's threads is unsafe.
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init,
            initargs=(self._config,),
        )

    async def start(self) -> None:
        """Start the workers and wait until each has opened the store."""
        self._pools = [self._new_pool() for _ in range(self._processes)]
        self._lanes = [
            Coalescer(functools.partial(self._take_group, lane), MAX_GROUP)
            for lane in range(self._processes)
        ]
        loop = asyncio.get_running_loop()
        pids = await asyncio.gather(*(loop.run_in_executor(p, _ready) for p in self._pools))
        _log.info("intake workers ready", processes=self._processes, pids=sorted(pids))

    def lane(self) -> int:
        """A worker for a new stream (round robin)."""
        self._next_lane = (self._next_lane + 1) % max(1, len(self._pools))
        return self._next_lane

    async def take(self, request: pb.StreamClicksRequest, now: float, lane: int) -> BatchOutcome:
        """Validate and commit one batch on worker ``lane``; raises StoreError if it could not."""
        if not self._pools:
            raise StoreError("intake workers are not running")
        return await self._lanes[lane % len(self._lanes)].take((request.SerializeToString(), now))

    async def _take_group(
        self, lane: int, raws: Sequence[tuple[bytes, float]]
    ) -> list[BatchOutcome]:
        if not self._pools:
            raise StoreError("intake workers are not running")
        pool = self._pools[lane]
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, _take, raws)
        except BrokenProcessPool:
            # The worker died (killed, out of memory). Its batches were not acked, so the
            # senders resend them; a fresh worker takes the lane's next batches.
            if self._pools and self._pools[lane] is pool:
                _log.error("an intake worker died; starting a new one", lane=lane)
                pool.shutdown(wait=False, cancel_futures=True)
                self._pools[lane] = self._new_pool()
            raise StoreError("an intake worker died; resend the batch") from None

    async def close(self) -> None:
        """Finish the batches in progress and stop the workers."""
        pools, self._pools = self._pools, []
        for pool in pools:
            await asyncio.to_thread(pool.shutdown, wait=True)
