"""A StreamClicks receiver for the sidecar's tests (until the real server fixture exists).

It behaves like the server's contract: one response per batch, in order, after the batch is
"committed" (recorded in ``clicks``, which survives restarts of the gRPC server), duplicates
answered DUPLICATE, and it can be told to reject clicks, stall, fail or report NOT_SERVING.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio
from elido.forwarder.v1 import forwarder_pb2, forwarder_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "elido.forwarder.v1.ForwarderService"


@dataclass
class Received:
    """What the receiver saw, across restarts."""

    clicks: dict[str, forwarder_pb2.Click] = field(default_factory=dict)
    # Every click id as it arrived, re-sends included.
    wire: Counter[str] = field(default_factory=Counter)
    batches: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    metadata: list[tuple[tuple[str, str | bytes], ...]] = field(default_factory=list)


class FakeForwarder(forwarder_pb2_grpc.ForwarderServiceServicer):
    def __init__(self, received: Received) -> None:
        self.received = received
        self.reject: Callable[[forwarder_pb2.Click], str] = lambda click: ""
        # Abort the stream with UNAVAILABLE after this many more batches (None: never).
        self.fail_after: int | None = None
        self.ack_delay_s = 0.0
        self.hold_acks = asyncio.Event()
        self.hold_acks.set()

    async def StreamClicks(
        self,
        request_iterator: AsyncIterator[forwarder_pb2.StreamClicksRequest],
        context: grpc.aio.ServicerContext[
            forwarder_pb2.StreamClicksRequest, forwarder_pb2.StreamClicksResponse
        ],
    ) -> AsyncIterator[forwarder_pb2.StreamClicksResponse]:
        self.received.metadata.append(tuple(context.invocation_metadata() or ()))
        async for request in request_iterator:
            if self.fail_after is not None:
                if self.fail_after <= 0:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "injected failure")
                self.fail_after -= 1
            await self.hold_acks.wait()
            if self.ack_delay_s:
                await asyncio.sleep(self.ack_delay_s)
            results = []
            for click in request.clicks:
                self.received.wire[click.click_id] += 1
                problem = self.reject(click)
                if problem:
                    results.append(
                        forwarder_pb2.ClickResult(
                            click_id=click.click_id,
                            disposition=forwarder_pb2.CLICK_DISPOSITION_REJECTED,
                            field_violations=[
                                forwarder_pb2.FieldViolation(
                                    field="clicks[0].destination_url", description=problem
                                )
                            ],
                        )
                    )
                    continue
                if click.click_id in self.received.clicks:
                    disposition = forwarder_pb2.CLICK_DISPOSITION_DUPLICATE
                else:
                    self.received.clicks[click.click_id] = click
                    disposition = forwarder_pb2.CLICK_DISPOSITION_QUEUED
                results.append(
                    forwarder_pb2.ClickResult(click_id=click.click_id, disposition=disposition)
                )
            self.received.batches.append(request.batch_id)
            self.received.batch_sizes.append(len(request.clicks))
            yield forwarder_pb2.StreamClicksResponse(batch_id=request.batch_id, results=results)


class FakeServer:
    """The receiver on 127.0.0.1; ``stop()`` and ``start()`` again on the same port."""

    def __init__(self, received: Received | None = None) -> None:
        self.received = received or Received()
        # Only StreamClicks is implemented; the stubs declare every RPC abstract.
        self.servicer = FakeForwarder(self.received)  # type: ignore[abstract]
        self.health = _Health()
        self.port = 0
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        forwarder_pb2_grpc.add_ForwarderServiceServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self, grace: float | None = 0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None


class _Health(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # untyped base
    def __init__(self) -> None:
        self.status = health_pb2.HealthCheckResponse.SERVING

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        return health_pb2.HealthCheckResponse(status=self.status)
