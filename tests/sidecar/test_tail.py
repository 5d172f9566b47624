import json
import os
from pathlib import Path
from typing import Any

from ingest_sidecar import Sidecar
from tests.sidecar.fakes import FakeServer
from tests.sidecar.helpers import make_config, wait_for

FIELDS = {
    "workspace_id": "ws",
    "destination_url": "upstream.location",
    "click_time": "time_iso8601",
    "user_agent": "http_user_agent",
    "click_id": "request_id",
}


def log_line(i: int) -> bytes:
    record: dict[str, Any] = {
        "ws": "ws-1",
        "request_id": f"req-{i:06d}",
        "upstream": {"location": f"https://shop.example/?utm_source=k&email=u{i}%40example.com"},
        "time_iso8601": "2026-11-27T10:00:00+00:00",
        "http_user_agent": "curl/8",
    }
    return json.dumps(record).encode() + b"\n"


def append(path: Path, *chunks: bytes) -> None:
    with path.open("ab") as f:
        for chunk in chunks:
            f.write(chunk)


async def start(tmp_path: Path, server: FakeServer, log: Path) -> Sidecar:
    config = make_config(
        tmp_path, server.target, tail={"path": str(log), "poll_interval_s": 0.02, "fields": FIELDS}
    )
    sidecar = Sidecar(config)
    await sidecar.start()
    assert sidecar.tailer is not None
    sidecar.tailer._rotate_wait_s = 0.1
    return sidecar


def ids(server: FakeServer) -> set[str]:
    return set(server.received.clicks)


def expected(rng: range) -> set[str]:
    return {f"req-{i:06d}" for i in rng}


async def test_tail_both_rotations_and_restart_lose_nothing(tmp_path: Path) -> None:
    server = FakeServer()
    await server.start()
    log = tmp_path / "access.log"
    append(log, *(log_line(i) for i in range(100)))
    sidecar = await start(tmp_path, server, log)
    try:
        await wait_for(lambda: ids(server) == expected(range(100)))
        # rename-and-create, with lines written to the old file after the rename (the proxy
        # has not reopened its log yet) and to the new one.
        log.rename(tmp_path / "access.log.1")
        append(tmp_path / "access.log.1", *(log_line(i) for i in range(100, 120)))
        append(log, *(log_line(i) for i in range(120, 150)))
        await wait_for(lambda: ids(server) == expected(range(150)))
        # copytruncate: copy, then truncate in place, then new lines.
        (tmp_path / "access.log.2").write_bytes(log.read_bytes())
        os.truncate(log, 0)
        append(log, *(log_line(i) for i in range(150, 160)))
        await wait_for(lambda: ids(server) == expected(range(160)))
    finally:
        await sidecar.stop()
    # Down for a while: more lines, then a rename rotation while the sidecar is away.
    append(log, *(log_line(i) for i in range(160, 170)))
    log.rename(tmp_path / "access.log.3")
    append(log, *(log_line(i) for i in range(170, 180)))
    sidecar = await start(tmp_path, server, log)
    try:
        await wait_for(lambda: ids(server) == expected(range(180)))
    finally:
        await sidecar.stop()
        await server.stop()
    # Re-reading after a checkpoint would show up as re-sent ids.
    assert max(server.received.wire.values()) == 1


async def test_bad_log_lines_are_skipped(tmp_path: Path) -> None:
    server = FakeServer()
    await server.start()
    log = tmp_path / "access.log"
    append(
        log,
        log_line(0),
        b'127.0.0.1 - - [27/Nov/2026] "GET / HTTP/1.1" 200\n',
        b"\xc3\x28 not utf-8\n",
        b'{"ws": "ws-1", "upstream": {"location": "https://x.example/"}}\n',
        b'{"ws": "ws-1", "huge": "' + b"a" * 70_000 + b'"}\n',
        b"\n",
        log_line(1),
    )
    sidecar = await start(tmp_path, server, log)
    try:
        await wait_for(lambda: ids(server) == expected(range(2)))
        # A huge line arriving in pieces is skipped whole, and what follows is read.
        append(log, b'{"ws": "' + b"b" * 70_000)
        append(log, b'"}\n', log_line(2))
        await wait_for(lambda: ids(server) == expected(range(3)))
        registry = sidecar.metrics.registry

        def count(reason: str) -> float:
            value = registry.get_sample_value(
                "elido_sidecar_dropped_records_total", {"source": "log", "reason": reason}
            )
            return value or 0.0

        assert count("malformed_json") == 1
        assert count("not_utf8") == 1
        assert count("anonymous") == 1
        assert count("line_too_long") == 2
    finally:
        await sidecar.stop()
        await server.stop()
