"""The StreamClicks helper: batching, back-pressure, acks, reconnection, ack deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from client import AsyncForwarderClient, ClientConfig, DeadlineExceeded, InvalidArgument
from tests.client.fake_server import Failure, RunningFake

KEY = "pk_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7"


async def _clicks(
    count: int, *, delay_s: float = 0.0, pulled: list[int] | None = None
) -> AsyncIterator[pb.Click]:
    for index in range(count):
        if delay_s:
            await asyncio.sleep(delay_s)
        if pulled is not None:
            pulled.append(index)
        yield pb.Click(
            click_id=f"c{index}",
            workspace_id="ws-1",
            identifiers=pb.ProfileIdentifiers(email=f"u{index}@example.com"),
        )


async def test_clicks_are_batched_and_every_batch_is_acked(
    fake: RunningFake, admin_config: ClientConfig, ingest_config: ClientConfig
) -> None:
    async with AsyncForwarderClient(admin_config) as admin:
        await admin.register_integration("ws-1", KEY)
    async with AsyncForwarderClient(ingest_config) as client:
        acks = [a async for a in client.stream_clicks(_clicks(1200), batch_size=500)]
    assert [a.batch_id for a in acks] == [1, 2, 3]
    assert [len(a.results) for a in acks] == [500, 500, 200]
    results = [r for a in acks for r in a.results]
    assert [r.click_id for r in results] == [f"c{i}" for i in range(1200)]
    assert {r.disposition for r in results} == {pb.CLICK_DISPOSITION_QUEUED}


async def test_empty_source_ends_cleanly(fake: RunningFake, ingest_config: ClientConfig) -> None:
    async with AsyncForwarderClient(ingest_config) as client:
        assert [a async for a in client.stream_clicks(_clicks(0))] == []


async def test_slow_source_is_sent_after_linger_not_held_for_a_full_batch(
    fake: RunningFake, ingest_config: ClientConfig
) -> None:
    async with AsyncForwarderClient(ingest_config) as client:
        acks = [
            a
            async for a in client.stream_clicks(
                _clicks(3, delay_s=0.1), batch_size=500, linger_s=0.01
            )
        ]
    assert [len(a.results) for a in acks] == [1, 1, 1]


async def test_unacked_window_stops_reading_the_source(
    fake: RunningFake, ingest_config: ClientConfig
) -> None:
    release = asyncio.Event()
    fake.servicer.stream.hold_acks = release
    pulled: list[int] = []
    async with AsyncForwarderClient(ingest_config) as client:
        stream = client.stream_clicks(
            _clicks(10_000, pulled=pulled), batch_size=10, max_in_flight=2, linger_s=0.0
        )
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.3)
        # Two batches in flight, one being formed, one queue of clicks: nothing more.
        assert fake.servicer.batches_received <= 2
        assert len(pulled) <= 2 * 10 + 10 + 10 + 1
        release.set()
        assert (await first).batch_id == 1
        remaining = [a async for a in stream]
    assert len(remaining) == 999
    assert len(pulled) == 10_000


async def test_dropped_stream_resends_unacked_batches_without_duplicates(
    fake: RunningFake, admin_config: ClientConfig, ingest_config: ClientConfig
) -> None:
    async with AsyncForwarderClient(admin_config) as admin:
        await admin.register_integration("ws-1", KEY)
    fake.servicer.stream.fail_once_after_batches = 3
    async with AsyncForwarderClient(ingest_config) as client:
        acks = [
            a
            async for a in client.stream_clicks(
                _clicks(100), batch_size=10, max_in_flight=4, linger_s=0.0
            )
        ]
    assert sorted(a.batch_id for a in acks) == list(range(1, 11))
    assert fake.servicer.streams_opened == 2
    assert len(fake.servicer.clicks) == 100
    dispositions = {r.disposition for a in acks for r in a.results}
    assert dispositions == {pb.CLICK_DISPOSITION_QUEUED}


async def test_invalid_argument_ends_the_stream_without_retry(
    fake: RunningFake, ingest_config: ClientConfig
) -> None:
    fake.servicer.stream.fail_once_after_batches = 1
    fake.servicer.stream.failure = Failure(
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch too large",
        reason="INVALID_ARGUMENT",
        violations=[("clicks", "at most 1000")],
    )
    async with AsyncForwarderClient(ingest_config) as client:
        with pytest.raises(InvalidArgument) as caught:
            [a async for a in client.stream_clicks(_clicks(5))]
    assert caught.value.field_violations == [("clicks", "at most 1000")]
    assert fake.servicer.streams_opened == 1


async def test_missing_ack_raises_deadline_exceeded(
    fake: RunningFake, ingest_config: ClientConfig
) -> None:
    fake.servicer.stream.hold_acks = asyncio.Event()
    async with AsyncForwarderClient(ingest_config) as client:
        with pytest.raises(DeadlineExceeded):
            [a async for a in client.stream_clicks(_clicks(5), ack_timeout_s=0.3)]


async def test_source_error_reaches_the_caller(
    fake: RunningFake, ingest_config: ClientConfig
) -> None:
    async def broken() -> AsyncIterator[pb.Click]:
        yield pb.Click(click_id="c1", workspace_id="ws-1")
        raise RuntimeError("spool corrupted")

    async with AsyncForwarderClient(ingest_config) as client:
        with pytest.raises(RuntimeError, match="spool corrupted"):
            [a async for a in client.stream_clicks(broken())]
