"""Helpers shared by the sidecar tests."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ingest_sidecar import (
    ExtractConfig,
    HttpConfig,
    Secret,
    SidecarConfig,
    SpoolConfig,
    StreamConfig,
    TailConfig,
)


def make_config(
    tmp: Path,
    target: str = "",
    *,
    spool: dict[str, Any] | None = None,
    stream: dict[str, Any] | None = None,
    tail: dict[str, Any] | None = None,
    extract: dict[str, Any] | None = None,
    http: dict[str, Any] | None = None,
) -> SidecarConfig:
    return SidecarConfig(
        http=HttpConfig(port=0, **(http or {})),
        spool=SpoolConfig(
            directory=str(tmp / "spool"),
            **{
                "segment_bytes": 64 * 1024,
                "max_bytes": 8 * 1024 * 1024,
                "fsync_interval_ms": 2.0,
                **(spool or {}),
            },
        ),
        stream=StreamConfig(
            target=target,
            token=Secret("t0ken-ingest"),
            **{
                "batch_linger_ms": 5.0,
                "backoff_initial_s": 0.05,
                "backoff_max_s": 0.5,
                **(stream or {}),
            },
        ),
        tail=TailConfig(**(tail or {})),
        extract=ExtractConfig(**(extract or {})),
        shutdown_grace_s=2.0,
    )


def click_record(i: int, **overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "click_id": f"c-{i:08d}",
        "workspace_id": "ws-1",
        "link_id": "lnk-7",
        "short_url": "https://eli.do/abc",
        "destination_url": f"https://shop.example/p?utm_source=klaviyo&email=user{i}%40example.com",
        "click_time": "2026-11-27T10:00:00+00:00",
        "user_agent": "Mozilla/5.0",
        "referrer": "https://mail.example/",
    }
    record.update(overrides)
    return record


async def http_request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [
            f"{method} {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Connection: close",
            f"Content-Length: {len(body)}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head_bytes, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    parsed = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        parsed[k.strip().lower()] = v.strip()
    return status, parsed, payload


async def post_clicks(port: int, records: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    body = "\n".join(json.dumps(r) for r in records).encode()
    status, _, payload = await http_request(
        port, "POST", "/v1/clicks", body, {"Content-Type": "application/x-ndjson"}
    )
    return status, json.loads(payload)


async def wait_for(condition: Callable[[], bool], within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
