import asyncio
from pathlib import Path

from elido.forwarder.v1 import forwarder_pb2
from grpc_health.v1 import health_pb2

from ingest_sidecar import Sidecar
from tests.sidecar.fakes import FakeServer
from tests.sidecar.helpers import click_record, make_config, post_clicks, wait_for


def sample(sidecar: Sidecar, name: str, **labels: str) -> float:
    return sidecar.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_batches_are_bounded_and_the_window_is_respected(tmp_path: Path) -> None:
    server = FakeServer()
    await server.start()
    server.servicer.hold_acks.clear()
    sidecar = Sidecar(
        make_config(tmp_path, server.target, stream={"batch_max_clicks": 7, "window_batches": 3})
    )
    await sidecar.start()
    try:
        status, _ = await post_clicks(sidecar.http_port, [click_record(i) for i in range(100)])
        assert status == 202
        await asyncio.sleep(0.3)
        assert sample(sidecar, "elido_sidecar_inflight_batches") == 3
        assert sample(sidecar, "elido_sidecar_sent_clicks_total") == 21
        server.servicer.hold_acks.set()
        await wait_for(lambda: len(server.received.clicks) == 100)
        assert max(server.received.batch_sizes) == 7
        assert server.received.batches[:5] == [1, 2, 3, 4, 5]
        await wait_for(lambda: sidecar.spool is not None and sidecar.spool.unacked == 0)
    finally:
        await sidecar.stop()
        await server.stop()


async def test_rejected_clicks_are_counted_and_never_resent(tmp_path: Path) -> None:
    server = FakeServer()
    server.servicer.reject = lambda click: "bad" if click.click_id.endswith("3") else ""
    await server.start()
    sidecar = Sidecar(make_config(tmp_path, server.target))
    await sidecar.start()
    try:
        await post_clicks(sidecar.http_port, [click_record(i) for i in range(30)])
        await wait_for(lambda: sidecar.spool is not None and sidecar.spool.unacked == 0)
        assert len(server.received.clicks) == 27
        assert (
            sample(
                sidecar, "elido_sidecar_dropped_records_total", source="stream", reason="rejected"
            )
            == 3
        )
        assert sample(sidecar, "elido_sidecar_acked_clicks_total", disposition="queued") == 27
        await asyncio.sleep(0.1)
        assert max(server.received.wire.values()) == 1
    finally:
        await sidecar.stop()
        await server.stop()


async def test_stream_failures_resend_unacked_batches(tmp_path: Path) -> None:
    server = FakeServer()
    await server.start()
    server.servicer.fail_after = 2
    sidecar = Sidecar(make_config(tmp_path, server.target, stream={"batch_max_clicks": 10}))
    await sidecar.start()
    try:
        await post_clicks(sidecar.http_port, [click_record(i) for i in range(100)])
        await wait_for(lambda: len(server.received.clicks) >= 20)
        server.servicer.fail_after = None
        await wait_for(lambda: len(server.received.clicks) == 100)
        # The server ends the stream with UNAVAILABLE; depending on how the transport races the
        # end of the stream against the batches in flight, the sidecar sees it as UNAVAILABLE
        # or INTERNAL. Either way it reconnected and re-sent what was not acked.
        reconnects = sum(
            sample(sidecar, "elido_sidecar_stream_reconnects_total", reason=reason)
            for reason in ("unavailable", "internal")
        )
        assert reconnects >= 1
    finally:
        await sidecar.stop()
        await server.stop()


async def test_forwarder_away_then_back_catches_up(tmp_path: Path) -> None:
    server = FakeServer()
    await server.start()
    sidecar = Sidecar(make_config(tmp_path, server.target))
    await sidecar.start()
    try:
        await post_clicks(sidecar.http_port, [click_record(i) for i in range(10)])
        await wait_for(lambda: len(server.received.clicks) == 10)
        await server.stop()
        # Accepting continues while the forwarder is away.
        for n in range(5):
            status, _ = await post_clicks(
                sidecar.http_port, [click_record(100 + n * 10 + i) for i in range(10)]
            )
            assert status == 202
        assert sidecar.spool is not None
        await wait_for(lambda: not sidecar.streamer or not sidecar.streamer.connected)
        assert sidecar.spool.unacked == 50
        # Back, but not serving yet: nothing is streamed.
        server.health.status = health_pb2.HealthCheckResponse.NOT_SERVING
        await server.start()
        await asyncio.sleep(0.5)
        assert len(server.received.clicks) == 10
        server.health.status = health_pb2.HealthCheckResponse.SERVING
        await wait_for(lambda: len(server.received.clicks) == 60)
        await wait_for(lambda: sidecar.spool is not None and sidecar.spool.unacked == 0)
        assert sample(sidecar, "elido_sidecar_stream_reconnects_total", reason="not_serving") >= 1
    finally:
        await sidecar.stop()
        await server.stop()


async def test_graceful_shutdown_drains_to_the_forwarder(tmp_path: Path) -> None:
    server = FakeServer()
    server.servicer.ack_delay_s = 0.05
    await server.start()
    sidecar = Sidecar(make_config(tmp_path, server.target, stream={"batch_max_clicks": 20}))
    await sidecar.start()
    await post_clicks(sidecar.http_port, [click_record(i) for i in range(200)])
    await sidecar.stop()
    try:
        assert len(server.received.clicks) == 200
        assert (tmp_path / "spool" / "ack.cursor").read_text().split()[2] == "200"
    finally:
        await server.stop()


def test_encoded_requests_parse_as_the_proto() -> None:
    from ingest_sidecar._stream import encode_request

    clicks = [forwarder_pb2.Click(click_id=f"c{i}", workspace_id="w" * (i * 40)) for i in range(5)]
    wire = encode_request(300, [c.SerializeToString() for c in clicks])
    parsed = forwarder_pb2.StreamClicksRequest.FromString(wire)
    assert parsed.batch_id == 300
    assert list(parsed.clicks) == clicks
