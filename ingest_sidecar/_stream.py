"""Streams spooled clicks to the forwarder over ``StreamClicks`` and applies its acks.

Batches are bounded by ``batch_max_clicks`` and ``batch_linger_ms``; at most
``window_batches`` are in flight. The server answers every batch, in order, after a durable
commit; each answer advances the spool's ack cursor past its batch. Any stream failure
(UNAVAILABLE, a restart, NOT_SERVING health, a missing ack) closes the stream; the next one,
opened after exponential backoff with full jitter, rewinds to the first unacked record and
sends everything again (the server deduplicates by click id).

The spool holds each click as a serialized ``Click``; a request is assembled from those bytes
directly (``StreamClicksRequest`` is ``batch_id`` = field 1 and repeated ``clicks`` = field 2),
so that clicks are never parsed again on the way out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
import grpc.aio
import structlog
from elido.forwarder.v1 import forwarder_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _tracing, _wire
from ._config import StreamConfig
from ._metrics import Metrics
from ._ratelimit import LogLimiter
from ._spool import Position, Spool, SpoolClosed

log = structlog.get_logger(__name__)

METHOD: Final = "/elido.forwarder.v1.ForwarderService/StreamClicks"
_DISPOSITIONS: Final = {
    value: name.removeprefix("CLICK_DISPOSITION_").lower()
    for name, value in forwarder_pb2.ClickDisposition.items()
}


def encode_request(batch_id: int, clicks: list[bytes]) -> bytes:
    """The wire form of ``StreamClicksRequest(batch_id, clicks)`` from serialized clicks."""
    return _wire.stream_request(batch_id, clicks)


# grpc-stubs does not declare the end-of-stream sentinel.
_EOF: Final = grpc.aio.EOF  # type: ignore[attr-defined]


def _identity(data: bytes) -> bytes:
    return data


class StreamBroken(Exception):
    """The stream cannot continue; reconnect."""


@dataclass(slots=True)
class _Batch:
    batch_id: int
    end: Position
    size: int


class Streamer:
    """Runs StreamClicks against the forwarder until stopped."""

    def __init__(
        self, config: StreamConfig, spool: Spool, metrics: Metrics, logs_per_minute: int = 30
    ) -> None:
        self._config = config
        self._spool = spool
        self._metrics = metrics
        self._reader = spool.reader()
        self._bad = LogLimiter(logs_per_minute, __name__)
        self._inflight: collections.deque[_Batch] = collections.deque()
        self._window_free = asyncio.Event()
        self._acked = asyncio.Event()
        # Whether the current stream has had an ack (a stream that made progress resets the
        # reconnect backoff).
        self._acked_any = False
        self._stopping = False
        self._stopped = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self.connected = False

    # -- channel -----------------------------------------------------------------------

    def _make_channel(self) -> grpc.aio.Channel:
        config = self._config
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            # Our own backoff governs reconnects; keep grpc's from stacking on top of it.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(config.backoff_max_s * 1000)),
        ]
        if not config.tls:
            return grpc.aio.insecure_channel(config.target, options=options)
        if config.server_name:
            options.append(("grpc.ssl_target_name_override", config.server_name))
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(config.ca_file).read_bytes() if config.ca_file else None,
            private_key=Path(config.key_file).read_bytes() if config.key_file else None,
            certificate_chain=Path(config.cert_file).read_bytes() if config.cert_file else None,
        )
        return grpc.aio.secure_channel(config.target, credentials, options=options)

    def _metadata(self) -> grpc.aio.Metadata:
        metadata = grpc.aio.Metadata()
        if self._config.token:
            metadata.add("authorization", "Bearer " + self._config.token.reveal())
        return metadata

    # -- main loop -----------------------------------------------------------------------

    async def run(self) -> None:
        """Streams until :meth:`stop`; never raises for forwarder outages."""
        self._channel = self._make_channel()
        backoff = self._config.backoff_initial_s
        try:
            while not self._stopping:
                progressed = False
                try:
                    await self._check_health()
                    progressed = await self._run_stream()
                except StreamBroken as exc:
                    reason = str(exc.args[0])
                    progressed = bool(exc.args[1:] and exc.args[1])
                except grpc.aio.AioRpcError as exc:
                    reason = exc.code().name.lower()
                except SpoolClosed:
                    return
                else:
                    return
                finally:
                    self.connected = False
                    self._metrics.stream_connected.set(0)
                    self._inflight.clear()
                    self._metrics.inflight_batches.set(0)
                    _tracing.batches_abandoned("stream_closed")
                if self._stopping:
                    return
                self._metrics.stream_reconnects.labels(reason).inc()
                if progressed:
                    backoff = self._config.backoff_initial_s
                # Full jitter: many sidecars losing one forwarder must not return in lockstep.
                delay = random.uniform(0, backoff)  # noqa: S311 - jitter, not cryptography.
                log.info(
                    "stream_reconnecting",
                    reason=reason,
                    delay_s=round(delay, 3),
                    unacked=self._spool.unacked,
                )
                backoff = min(backoff * 2, self._config.backoff_max_s)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), delay)
        finally:
            self._reader.close()
            await self._channel.close(None)
            self._channel = None

    async def _check_health(self) -> None:
        if not self._config.health_service:
            return
        assert self._channel is not None
        stub = health_pb2_grpc.HealthStub(self._channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(service=self._config.health_service), timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND):
                # No health service, or it does not know this name: the stream will tell.
                return
            raise
        if response.status != health_pb2.HealthCheckResponse.SERVING:
            raise StreamBroken("not_serving")

    async def _run_stream(self) -> bool:
        """One stream; returns normally only when stopping. True if an ack arrived."""
        assert self._channel is not None
        self._reader.rewind()
        self._inflight.clear()
        self._window_free.set()
        method = self._channel.stream_stream(
            METHOD,
            request_serializer=_identity,
            response_deserializer=forwarder_pb2.StreamClicksResponse.FromString,
        )
        # No request iterator: requests are written with call.write() as batches form.
        call = method(None, metadata=self._metadata())
        self.connected = True
        self._metrics.stream_connected.set(1)
        log.info("stream_open", target=self._config.target, unacked=self._spool.unacked)
        sender = asyncio.create_task(self._send_loop(call), name="stream-send")
        receiver = asyncio.create_task(self._receive_loop(call), name="stream-receive")
        try:
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            if not self._stopping:
                # The server ended the stream cleanly (e.g. its graceful shutdown).
                raise StreamBroken("closed_by_server", self._acked_any)
            if sender in done and not receiver.done():
                # The sender finished because we are stopping: let the acks drain.
                with contextlib.suppress(StreamBroken):
                    await receiver
            return self._acked_any
        except grpc.aio.AioRpcError as exc:
            raise StreamBroken(exc.code().name.lower(), self._acked_any) from exc
        finally:
            sender.cancel()
            receiver.cancel()
            with contextlib.suppress(BaseException):
                await sender
            with contextlib.suppress(BaseException):
                await receiver
            call.cancel()

    async def _send_loop(self, call: Any) -> None:
        self._acked_any = False
        config = self._config
        batch_id = 0
        linger = config.batch_linger_ms / 1000.0
        while not self._stopping:
            while len(self._inflight) >= config.window_batches:
                self._window_free.clear()
                await self._window_free.wait()
            read = asyncio.ensure_future(self._reader.read(config.batch_max_clicks, linger))
            stop = asyncio.ensure_future(self._stopped.wait())
            try:
                await asyncio.wait({read, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, SpoolClosed):
                    await read
                break
            clicks, end = read.result()
            batch_id += 1
            self._inflight.append(_Batch(batch_id, end, len(clicks)))
            self._metrics.inflight_batches.set(len(self._inflight))
            try:
                await call.write(
                    encode_request(batch_id, clicks)
                    + _tracing.batch_sent(batch_id, end.seq - len(clicks), end.seq)
                )
            except asyncio.InvalidStateError:
                # The call already ended: report its status, as the receiver would.
                code = await call.code()
                raise StreamBroken(code.name.lower(), self._acked_any) from None
            self._metrics.sent.inc(len(clicks))
        await self._drain_inflight()
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.done_writing()

    async def _drain_inflight(self) -> None:
        while self._inflight:
            self._window_free.clear()
            await self._window_free.wait()

    async def _receive_loop(self, call: Any) -> None:
        while True:
            try:
                response = await asyncio.wait_for(
                    call.read(), self._config.ack_timeout_s if self._inflight else None
                )
            except TimeoutError:
                if self._inflight:
                    raise StreamBroken("ack_timeout", self._acked_any) from None
                continue
            if response is _EOF:
                if self._inflight:
                    raise StreamBroken("closed_by_server", self._acked_any)
                return
            if not self._inflight or response.batch_id != self._inflight[0].batch_id:
                raise StreamBroken("unexpected_ack", self._acked_any)
            batch = self._inflight.popleft()
            self._apply(batch, response)
            self._metrics.inflight_batches.set(len(self._inflight))
            self._window_free.set()

    def _apply(self, batch: _Batch, response: forwarder_pb2.StreamClicksResponse) -> None:
        counts: collections.Counter[str] = collections.Counter()
        for result in response.results:
            name = _DISPOSITIONS.get(result.disposition, "unspecified")
            counts[name] += 1
            if result.disposition == forwarder_pb2.CLICK_DISPOSITION_REJECTED:
                # Final: a rejected click would be rejected again; never resend it.
                self._metrics.dropped.labels("stream", "rejected").inc()
                self._bad.warning(
                    "click_rejected_by_forwarder",
                    "rejected",
                    click_id=result.click_id,
                    violations=[f"{v.field}: {v.description}" for v in result.field_violations],
                )
        missing = batch.size - len(response.results)
        if missing > 0:
            # A server that answers without per-click results still acks the whole batch.
            counts["unspecified"] += missing
        for name, count in counts.items():
            self._metrics.acked.labels(name).inc(count)
        self._spool.ack(batch.end)
        _tracing.batch_acked(batch.batch_id)
        self._acked_any = True
        self._acked.set()

    async def stop(self, grace_s: float) -> None:
        """Stops after the spool is caught up or ``grace_s`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.connected and self._spool.unacked and loop.time() < deadline:
            self._acked.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked.wait(), max(0.0, deadline - loop.time()))
        self._stopping = True
        self._stopped.set()
