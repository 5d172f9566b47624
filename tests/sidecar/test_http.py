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


async def raw_exchange(port: int, data: bytes, half_close: bool = False) -> bytes:
    """Sends ``data`` on a fresh connection and returns everything answered until close.

    The 20 s bound only turns a hang into a failure: the sidecar's idle timeout in these tests
    is an hour, so an answer at all means it answered at once.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        if half_close:
            writer.write_eof()
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 20)
    finally:
        writer.close()


@pytest.fixture
async def patient_sidecar(tmp_path: Path) -> AsyncIterator[Sidecar]:
    running = Sidecar(make_config(tmp_path, http={"idle_timeout_s": 3600.0}))
    await running.start()
    yield running
    await running.stop()


@pytest.mark.parametrize(
    "request_bytes",
    [
        # A negative chunk size (was a traceback and no answer).
        b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n",
        # Bare LF line endings in the head (was a wait for the idle timeout).
        b"POST /v1/clicks HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",
        b"GET /healthz HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
        # Bare LF after a chunk size.
        b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\n{}",
        b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/clicks HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to a plain-text port
    ],
)
async def test_malformed_framing_gets_400_at_once(
    patient_sidecar: Sidecar, request_bytes: bytes
) -> None:
    answer = await raw_exchange(patient_sidecar.http_port, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"Connection: close" in answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    # Nothing was taken, and the next request is served.
    assert patient_sidecar.spool is not None
    assert patient_sidecar.spool.unacked == 0
    status, _ = await post_clicks(patient_sidecar.http_port, [click_record(1)])
    assert status == 202


async def test_truncated_request_gets_400_when_the_client_stops_sending(
    patient_sidecar: Sidecar,
) -> None:
    body = json.dumps(click_record(1)).encode()
    head = b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = await raw_exchange(patient_sidecar.http_port, head + body[:10], half_close=True)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert patient_sidecar.spool is not None
    assert patient_sidecar.spool.unacked == 0


async def test_expect_100_continue_and_http_1_0(sidecar: Sidecar) -> None:
    body = json.dumps(click_record(1)).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.http_port)
    writer.write(
        b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 ")
    writer.write(body)
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 202 ")
    writer.close()
    # HTTP/1.0 without keep-alive: answered, then closed.
    answer = await raw_exchange(
        sidecar.http_port,
        b"POST /v1/clicks HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), json.dumps(click_record(2)).encode()),
    )
    assert answer.startswith(b"HTTP/1.1 202 "), answer
    assert sidecar.spool is not None
    assert sidecar.spool.unacked == 2
