"""Streaming clicks through ``StreamClicks`` with back-pressure and acknowledgements.

Clicks are pulled from the caller's async iterable, grouped into batches (up to
``batch_size`` clicks, or whatever arrived within ``linger_s`` of a batch's first click) and
written to the stream. At most ``max_in_flight`` batches are unacknowledged at a time; when
the window is full the source is not read, so a fast producer is slowed to the server's pace
instead of filling memory. Each acknowledgement is matched to its batch by ``batch_id`` and
handed to the caller.

When the stream fails with an error that is safe to retry (see :mod:`client._retry`), a new
stream is opened after the backoff and every unacknowledged batch is sent again: the server
dedupes clicks on their ids, so a re-sent click that was in fact committed is answered
``CLICK_DISPOSITION_DUPLICATE`` rather than forwarded twice.

The stream itself has no deadline (it lives as long as the source); instead each batch must
be acknowledged within ``ack_timeout_s`` of being written, or the stream is cancelled and
:class:`~client._exceptions.DeadlineExceeded` is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import grpc
import grpc.aio
import structlog
from elido.forwarder.v1 import forwarder_pb2 as pb

from client._exceptions import (
    ClientError,
    DeadlineExceeded,
    ForwarderError,
    Unavailable,
    error_from_rpc,
)
from client._retry import RetryPolicy

_log = structlog.get_logger(__name__)

MAX_BATCH_SIZE: Final = 1000  # The API's limit on clicks per StreamClicksRequest.

StreamCall = grpc.aio.StreamStreamCall[pb.StreamClicksRequest, pb.StreamClicksResponse]
OpenStream = Callable[[], StreamCall]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Batching and flow-control settings of :func:`stream_clicks`."""

    batch_size: int = 500
    max_in_flight: int = 8
    linger_s: float = 0.01
    ack_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ClientError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}")
        if self.max_in_flight < 1:
            raise ClientError("max_in_flight must be at least 1")
        if self.linger_s < 0 or self.ack_timeout_s <= 0:
            raise ClientError("linger_s must be >= 0 and ack_timeout_s > 0")


class _End:
    """Marks the end of the click source."""


_END: Final = _End()


@dataclass(slots=True)
class _Event:
    """Something the main loop must react to; ``generation`` names the stream it came from."""

    kind: str  # "ack", "rpc_error", "eof", "batch", "source_error"
    generation: int = 0
    value: Any = None


class _ClickStreamer:
    def __init__(
        self,
        open_stream: OpenStream,
        clicks: AsyncIterable[pb.Click],
        settings: StreamSettings,
        retry: RetryPolicy,
    ) -> None:
        self._open_stream = open_stream
        self._source = clicks
        self._settings = settings
        self._retry = retry
        self._clicks: asyncio.Queue[pb.Click | _End] = asyncio.Queue(settings.batch_size)
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._events: asyncio.Queue[_Event] = asyncio.Queue()
        # Unacknowledged batches in send order, and when each was last written.
        self._pending: OrderedDict[int, pb.StreamClicksRequest] = OrderedDict()
        self._written_at: dict[int, float] = {}
        self._outbox: asyncio.Queue[pb.StreamClicksRequest | _End] = asyncio.Queue()
        self._source_done = False
        self._generation = 0
        self._call: StreamCall | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stream_tasks: list[asyncio.Task[None]] = []
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography.

    async def run(self) -> AsyncIterator[pb.StreamClicksResponse]:
        self._tasks = [
            asyncio.create_task(self._pump()),
            asyncio.create_task(self._batch()),
        ]
        failures = 0
        try:
            self._connect()
            while True:
                if self._source_done and not self._pending:
                    await self._finish()
                    return
                event = await self._next_event()
                if event is None:
                    continue
                if event.kind == "ack":
                    failures = 0
                    yield event.value
                elif event.kind == "source_error":
                    raise event.value
                elif event.kind in ("rpc_error", "eof"):
                    error = self._stream_error(event)
                    failures += 1
                    delay = self._retry_delay(error, failures)
                    if delay is None:
                        raise error
                    _log.info(
                        "click_stream_reconnect",
                        code=error.code.name,
                        unacked_batches=len(self._pending),
                        delay_s=round(delay, 3),
                    )
                    await asyncio.sleep(delay)
                    self._connect()
        finally:
            await self._close()

    async def _next_event(self) -> _Event | None:
        """The next event of the current stream; raises if a batch's ack is overdue."""
        try:
            event = await asyncio.wait_for(self._events.get(), self._settings.ack_timeout_s)
        except TimeoutError:
            now = time.monotonic()
            if any(now - t > self._settings.ack_timeout_s for t in self._written_at.values()):
                raise DeadlineExceeded(
                    f"no acknowledgement within {self._settings.ack_timeout_s:g}s",
                    method="StreamClicks",
                ) from None
            return None
        if event.kind == "batch":
            return None  # Only wakes the loop up so that it sees the source is done.
        if event.kind in ("ack", "rpc_error", "eof") and event.generation != self._generation:
            return None  # Left over from a stream already abandoned.
        if event.kind == "ack":
            response: pb.StreamClicksResponse = event.value
            if self._pending.pop(response.batch_id, None) is None:
                _log.warning("click_stream_unexpected_ack", batch_id=response.batch_id)
                return None
            self._written_at.pop(response.batch_id, None)
            self._slots.release()
        return event

    def _stream_error(self, event: _Event) -> ForwarderError:
        if event.kind == "rpc_error":
            return error_from_rpc(event.value, method="StreamClicks")
        # A stream that ends cleanly while batches are unacknowledged broke the API's promise
        # of one response per request; re-sending them is still safe.
        return Unavailable(
            f"the server ended the stream with {len(self._pending)} batches unacknowledged",
            method="StreamClicks",
        )

    def _retry_delay(self, error: ForwarderError, failures: int) -> float | None:
        # A stream torn down while we were still writing surfaces as INTERNAL "from Core"
        # rather than UNAVAILABLE, depending on timing; it is a transport failure all the same,
        # and resending unacked batches is safe (click ids are idempotent).
        transport = error.code is grpc.StatusCode.INTERNAL and "from Core" in str(error)
        retryable = transport or self._retry.is_retryable(error)
        if failures >= self._retry.max_attempts or not retryable:
            return None
        if error.retry_delay is not None and (
            error.retry_delay.total_seconds() > self._retry.max_retry_info_delay_s
        ):
            return None
        return self._retry.delay_s(error, failures - 1, self._rng)

    def _connect(self) -> None:
        """Opens a new stream and queues every unacknowledged batch on it, oldest first."""
        self._abandon_stream()
        self._generation += 1
        self._call = self._open_stream()
        # No await between draining and refilling: the batcher cannot slip a batch in between,
        # so each pending batch is queued exactly once, in batch id order.
        while not self._outbox.empty():
            self._outbox.get_nowait()
        self._written_at.clear()
        for request in self._pending.values():
            self._outbox.put_nowait(request)
        if self._source_done:
            self._outbox.put_nowait(_END)
        self._stream_tasks = [
            asyncio.create_task(self._write(self._call)),
            asyncio.create_task(self._read(self._call, self._generation)),
        ]

    def _abandon_stream(self) -> None:
        for task in self._stream_tasks:
            task.cancel()
        self._stream_tasks = []
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def _finish(self) -> None:
        """Lets the server end the stream after our half-close, as the protocol intends."""
        if self._stream_tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*self._stream_tasks, return_exceptions=True),
                    self._settings.ack_timeout_s,
                )

    async def _close(self) -> None:
        self._abandon_stream()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _pump(self) -> None:
        try:
            async for click in self._source:
                await self._clicks.put(click)
        except Exception as exc:  # Handed to the caller through the event queue.
            self._events.put_nowait(_Event("source_error", value=exc))
            return
        await self._clicks.put(_END)

    async def _batch(self) -> None:
        next_batch_id = 1
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            first = await self._clicks.get()
            if isinstance(first, _End):
                self._slots.release()
                break
            clicks = [first]
            until = loop.time() + self._settings.linger_s
            ended = False
            while len(clicks) < self._settings.batch_size:
                if self._clicks.empty():
                    remaining = until - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._clicks.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    item = self._clicks.get_nowait()
                if isinstance(item, _End):
                    ended = True
                    break
                clicks.append(item)
            request = pb.StreamClicksRequest(batch_id=next_batch_id, clicks=clicks)
            self._pending[next_batch_id] = request
            self._outbox.put_nowait(request)
            next_batch_id += 1
            if ended:
                break
        self._source_done = True
        self._outbox.put_nowait(_END)
        self._events.put_nowait(_Event("batch"))

    async def _write(self, call: StreamCall) -> None:
        try:
            while True:
                request = await self._outbox.get()
                if isinstance(request, _End):
                    await call.done_writing()
                    return
                self._written_at[request.batch_id] = time.monotonic()
                await call.write(request)
        except (grpc.RpcError, asyncio.InvalidStateError):
            return  # The reader sees the same failure as the stream's status and reports it.

    async def _read(self, call: StreamCall, generation: int) -> None:
        try:
            async for response in call:
                self._events.put_nowait(_Event("ack", generation, response))
        except grpc.RpcError as exc:
            self._events.put_nowait(_Event("rpc_error", generation, exc))
            return
        if generation == self._generation and self._pending:
            self._events.put_nowait(_Event("eof", generation))


async def stream_clicks(
    open_stream: OpenStream,
    clicks: AsyncIterable[pb.Click],
    *,
    settings: StreamSettings,
    retry: RetryPolicy,
) -> AsyncIterator[pb.StreamClicksResponse]:
    """Sends ``clicks`` in batches, yielding each batch's acknowledgement as it arrives."""
    streamer = _ClickStreamer(open_stream, clicks, settings, retry)
    async for response in streamer.run():
        yield response
