import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ingest_sidecar import Sidecar
from tests.sidecar.helpers import click_record, http_request, make_config, post_clicks


@pytest.fixture
async def sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    # No stream target: clicks stay in the spool, which is what these tests inspect.
    running = Sidecar(make_config(tmp_path, http={"max_body_bytes": 64 * 1024}))
    await running.start()
    yield running
    await running.stop()


def dropped(sidecar: Sidecar, reason: str) -> float:
    value = sidecar.metrics.registry.get_sample_value(
        "elido_sidecar_dropped_records_total", {"source": "http", "reason": reason}
    )
    return 0.0 if value is None else value


async def test_json_array_and_single_object(sidecar: Sidecar) -> None:
    port = sidecar.http_port
    body = json.dumps([click_record(1), click_record(2)]).encode()
    status, _, payload = await http_request(port, "POST", "/v1/clicks", body)
    assert status == 202
    assert json.loads(payload) == {"accepted": 2, "skipped": 0, "reasons": {}}
    status, _, payload = await http_request(
        port, "POST", "/v1/clicks", json.dumps(click_record(3)).encode()
    )
    assert (status, json.loads(payload)["accepted"]) == (202, 1)
    assert sidecar.spool is not None
    assert sidecar.spool.unacked == 3


async def test_bad_input_is_counted_and_skipped_not_fatal(sidecar: Sidecar) -> None:
    lines = [
        json.dumps(click_record(1)).encode(),
        b"{not json",
        b'\xff\xfe{"workspace_id": "w"}',
        b"[1, 2]",
        json.dumps(click_record(2, destination_url="https://shop.example/no-query")).encode(),
        json.dumps(click_record(3, workspace_id=7.5e300)).encode(),
        json.dumps(click_record(4, destination_url=12)).encode(),
        json.dumps(click_record(5)).encode(),
    ]
    status, _, payload = await http_request(
        sidecar.http_port, "POST", "/v1/clicks", b"\n".join(lines)
    )
    answer = json.loads(payload)
    assert status == 202
    assert answer["accepted"] == 2
    assert answer["reasons"] == {
        "malformed_json": 1,
        "not_utf8": 1,
        "not_an_object": 1,
        "anonymous": 1,
        "invalid_workspace_id": 1,
        "invalid_url": 1,
    }
    assert dropped(sidecar, "not_utf8") == 1
    # The sidecar keeps working.
    status, _ = await post_clicks(sidecar.http_port, [click_record(6)])
    assert status == 202


async def test_protocol_errors(sidecar: Sidecar) -> None:
    port = sidecar.http_port
    assert (await http_request(port, "POST", "/v1/clicks", b"x" * 70_000))[0] == 413
    assert (await http_request(port, "GET", "/v1/clicks"))[0] == 405
    assert (await http_request(port, "GET", "/nope"))[0] == 404
    assert (await http_request(port, "POST", "/v1/clicks", b""))[0] == 400
    status, _, _ = await http_request(port, "POST", "/v1/clicks", b"", {"X-Huge": "h" * 40_000})
    assert status == 431


async def test_chunked_body_and_keep_alive(sidecar: Sidecar) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
    body = json.dumps(click_record(1)).encode()
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    for _ in range(2):
        writer.write(
            b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 202")
        length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    writer.close()
    assert sidecar.spool is not None
    assert sidecar.spool.unacked == 2


async def test_health_and_metrics(sidecar: Sidecar) -> None:
    await post_clicks(sidecar.http_port, [click_record(1)])
    status, _, payload = await http_request(sidecar.http_port, "GET", "/healthz")
    health = json.loads(payload)
    assert status == 200
    assert health["status"] == "ok"
    assert health["unacked_clicks"] == 1
    status, headers, payload = await http_request(sidecar.http_port, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = payload.decode()
    assert 'elido_sidecar_accepted_clicks_total{source="http"} 1.0' in text
    assert "elido_sidecar_spool_bytes " in text
    assert "elido_sidecar_lag_clicks 1.0" in text


async def test_full_spool_answers_503_with_retry_after(tmp_path: Path) -> None:
    sidecar = Sidecar(
        make_config(
            tmp_path,
            spool={"segment_bytes": 4096, "max_bytes": 12 * 1024},
            http={"full_wait_s": 0.05, "retry_after_s": 3},
        )
    )
    await sidecar.start()
    try:
        statuses = []
        for i in range(40):
            status, headers, _ = await http_request(
                sidecar.http_port,
                "POST",
                "/v1/clicks",
                json.dumps([click_record(i * 10 + j) for j in range(10)]).encode(),
            )
            statuses.append(status)
            if status == 503:
                assert headers["retry-after"] == "3"
                break
        assert statuses[-1] == 503
        accepted = 10 * statuses.count(202)
        assert sidecar.spool is not None
        assert sidecar.spool.unacked == accepted
    finally:
        await sidecar.stop()
