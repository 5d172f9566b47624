"""Generated bad HTTP input (seeded, bounded): a precise 4xx for each, and the sidecar keeps
taking valid clicks.

The sidecar runs on its own event loop in a thread so that hypothesis drives plain blocking
sockets; its idle timeout is an hour, so every answer below is an answer at once (the socket
timeout only turns a hang into a failure).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest_sidecar import Sidecar
from tests.sidecar.helpers import click_record, make_config

VALID = json.dumps(click_record(1)).encode()
METHODS = [b"POST", b"GET", b"PUT", b"DELETE", b"PATCH", b"BREW", b"HEAD"]


class ThreadedSidecar:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = make_config(tmp, http={"idle_timeout_s": 3600.0, "max_body_bytes": 4096})
        self.sidecar = Sidecar(config)
        self.call(self.sidecar.start())
        self.port = self.sidecar.http_port

    def call(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def close(self) -> None:
        self.call(self.sidecar.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def threaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedSidecar]:
    running = ThreadedSidecar(tmp_path_factory.mktemp("fuzz"))
    yield running
    running.close()


def exchange(port: int, data: bytes) -> tuple[int | None, bytes]:
    """(status or None when closed unanswered, raw answer); the request side is half-closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed while we were still sending (e.g. 431, 413)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    if not answer:
        return None, answer
    # The first answer (a 100 Continue is never asked for here).
    return int(answer.split(b" ", 2)[1]), answer


def assert_still_accepts(port: int) -> None:
    head = b"POST /v1/clicks HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(VALID)
    status, answer = exchange(port, head + VALID)
    assert status == 202, answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["accepted"] == 1


def request(method: bytes, target: bytes, headers: list[bytes], body: bytes) -> bytes:
    return b"%s %s HTTP/1.1\r\n%s\r\n%s" % (
        method,
        target,
        b"".join(h + b"\r\n" for h in headers),
        body,
    )


SETTINGS = settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(st.binary(min_size=1, max_size=600))
def test_random_bytes(threaded: ThreadedSidecar, data: bytes) -> None:
    status, answer = exchange(threaded.port, data)
    if data.startswith((b"GET /healthz", b"GET /metrics", b"HEAD /")):
        return  # (a valid request can be generated, in theory)
    # Not HTTP: refused, never taken, never a 5xx or a hang.
    assert status in (400, 404, 405, 413, 431, 501, None), answer
    if status is None:
        # Only input h11 cannot even start to parse is closed without an answer: nothing.
        assert not data.strip(b"\r\n"), data


@SETTINGS
@given(
    st.sampled_from(
        [
            b"-1",
            b"-5",
            b"+5",
            b" ",
            b"0x10",
            b"g",
            b"1" * 21,
            b"ffffffffffffffffffff1",
            b"\xff",
            b"5\n",
        ]
    ),
    st.binary(max_size=40),
)
def test_bad_chunk_sizes(threaded: ThreadedSidecar, size: bytes, rest: bytes) -> None:
    data = request(b"POST", b"/v1/clicks", [b"Host: x", b"Transfer-Encoding: chunked"], size)
    status, answer = exchange(threaded.port, data + b"\r\n" + rest)
    assert status == 400, answer


@SETTINGS
@given(
    st.sampled_from(
        [
            b"Content-Length: -1",
            b"Content-Length: abc",
            b"Content-Length: 1e3",
            b"Content-Length: 5\r\nContent-Length: 6",
            b"Transfer-Encoding: gzip",
            b"Transfer-Encoding: chunked\r\nContent-Length: 5",
            b"Bad Header: x",
            b": novalue",
            b"X-Nul: a\x00b",
            b" folded: x",
        ]
    )
)
def test_bad_headers(threaded: ThreadedSidecar, header: bytes) -> None:
    status, answer = exchange(
        threaded.port, request(b"POST", b"/v1/clicks", [b"Host: x", header], VALID)
    )
    expected = 501 if header == b"Transfer-Encoding: gzip" else 400
    assert status == expected, answer


@SETTINGS
@given(st.integers(min_value=1, max_value=len(VALID) + 60), st.booleans())
def test_truncated_requests(threaded: ThreadedSidecar, cut: int, chunked: bool) -> None:
    if chunked:
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(VALID), VALID)
        data = request(b"POST", b"/v1/clicks", [b"Host: x", b"Transfer-Encoding: chunked"], body)
    else:
        data = request(
            b"POST", b"/v1/clicks", [b"Host: x", b"Content-Length: %d" % len(VALID)], VALID
        )
    truncated = data[: max(1, len(data) - cut)]
    status, answer = exchange(threaded.port, truncated)
    assert status == 400, (truncated, answer)


@SETTINGS
@given(
    st.sampled_from(METHODS),
    st.sampled_from(
        [b"/v1/clicks", b"/clicks", b"/healthz", b"/metrics", b"/nope", b"*", b"/v1/clicks?x=1"]
    ),
)
def test_methods_and_paths(threaded: ThreadedSidecar, method: bytes, target: bytes) -> None:
    status, answer = exchange(
        threaded.port,
        request(method, target, [b"Host: x", b"Content-Length: %d" % len(VALID)], VALID),
    )
    path = target.split(b"?")[0]
    if path in (b"/v1/clicks", b"/clicks"):
        assert status == (202 if method == b"POST" else 405), answer
    elif path in (b"/healthz", b"/metrics") and method in (b"GET", b"HEAD"):
        assert status == 200, answer
    else:
        assert status == 404, answer


@SETTINGS
@given(st.binary(max_size=300))
def test_bodies_that_are_not_clicks(threaded: ThreadedSidecar, body: bytes) -> None:
    data = request(b"POST", b"/v1/clicks", [b"Host: x", b"Content-Length: %d" % len(body)], body)
    status, answer = exchange(threaded.port, data)
    payload = json.loads(answer.partition(b"\r\n\r\n")[2])
    if not body.strip():
        assert (status, payload) == (400, {"error": "empty body"})
    else:
        # Bad records are skipped with a reason each, never taken, never a 5xx.
        assert status == 202, answer
        assert payload["accepted"] == 0
        assert sum(payload["reasons"].values()) == payload["skipped"]


def test_oversized_head_and_body(threaded: ThreadedSidecar) -> None:
    status, _ = exchange(
        threaded.port, request(b"GET", b"/healthz", [b"X-Big: " + b"h" * 40_000], b"")
    )
    assert status == 431
    big = b"[" + b",".join([VALID] * 30) + b"]"
    status, _ = exchange(
        threaded.port,
        request(b"POST", b"/v1/clicks", [b"Host: x", b"Content-Length: %d" % len(big)], big),
    )
    assert status == 413
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big)
    status, _ = exchange(
        threaded.port,
        request(b"POST", b"/v1/clicks", [b"Host: x", b"Transfer-Encoding: chunked"], chunked),
    )
    assert status == 413


def test_still_accepts_after_the_fuzz(threaded: ThreadedSidecar) -> None:
    # Module order: this runs after every generated request above.
    assert_still_accepts(threaded.port)
    errors = threaded.sidecar.metrics.registry.get_sample_value(
        "elido_sidecar_http_errors_total", {"status": "400"}
    )
    assert errors is not None
    assert errors > 100
