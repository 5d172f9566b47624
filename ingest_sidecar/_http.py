"""The loopback HTTP/1.1 endpoint: click input, health and metrics.

A small asyncio HTTP/1.1 server rather than a framework: the sidecar's memory budget
(<= 50 MB RSS, of which gRPC alone takes ~30 MB) leaves no room for one, and the edge proxy
needs only ``POST`` with ``Content-Length`` or chunked bodies and keep-alive.

- ``POST /v1/clicks``: a JSON object, a JSON array of objects, or NDJSON. 202 once every
  taken click is fsynced in the spool, with ``{"accepted": n, "skipped": m, "reasons": {...}}``;
  503 with ``Retry-After`` when the spool is full (nothing of the request is taken then).
- ``GET /healthz``: 200 while the sidecar takes clicks, with the stream's state.
- ``GET /metrics``: Prometheus exposition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import structlog

from . import _tracing
from ._config import HttpConfig
from ._intake import Intake
from ._metrics import Metrics
from ._spool import SpoolClosed, SpoolFull

log = structlog.get_logger(__name__)

MAX_HEADER_BYTES: Final = 32 * 1024
SOURCE: Final = "http"
_REASONS: Final = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    503: "Service Unavailable",
}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HttpServer:
    """Serves the HTTP endpoints on ``config.host:config.port``."""

    def __init__(
        self,
        config: HttpConfig,
        intake: Intake,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
    ) -> None:
        self._config = config
        self._intake = intake
        self._metrics = metrics
        self._health = health
        self._server: asyncio.Server | None = None
        self._accepting = True
        self._connections: set[asyncio.Task[None]] = set()
        # Connections between reading a request head and writing its answer.
        self._busy: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        """Starts listening; returns the bound port."""
        self._server = await asyncio.start_server(
            self._serve, self._config.host, self._config.port, limit=MAX_HEADER_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("http_listening", host=self._config.host, port=self.port)
        return self.port

    async def stop_intake(self) -> None:
        """Stops taking clicks (503) and closes the listener; in-flight requests finish."""
        self._accepting = False
        if self._server is not None:
            self._server.close()
        for task in self._connections - self._busy:
            # Idle keep-alive connections: nothing to lose.
            task.cancel()
        if self._busy:
            # Requests that are writing to the spool get their answer.
            await asyncio.wait(set(self._busy), timeout=2.0)
        for task in set(self._connections):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                keep_alive = await self._one_request(reader, writer, task)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
    ) -> bool:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), self._config.idle_timeout_s
            )
        except asyncio.LimitOverrunError:
            await self._respond(writer, 431, {"error": "headers too large"}, keep_alive=False)
            return False
        except asyncio.IncompleteReadError:
            return False
        self._busy.add(task)
        try:
            return await self._handle(head, reader, writer)
        finally:
            self._busy.discard(task)

    async def _handle(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            method, path, version, headers = _parse_head(head)
        except _BadRequest as exc:
            await self._respond(writer, exc.status, {"error": str(exc)}, keep_alive=False)
            return False
        connection = headers.get("connection", "").lower()
        keep_alive = (version == "HTTP/1.1" and connection != "close") or (
            connection == "keep-alive"
        )
        try:
            body = await self._read_body(reader, headers)
        except _BadRequest as exc:
            await self._respond(writer, exc.status, {"error": str(exc)}, keep_alive=False)
            return False
        path = path.split("?", 1)[0]
        if path in ("/v1/clicks", "/clicks"):
            if method != "POST":
                await self._respond(
                    writer, 405, {"error": "use POST"}, keep_alive, extra={"Allow": "POST"}
                )
                return keep_alive
            status, payload, extra = await _tracing.http_request(headers, self._post_clicks(body))
            await self._respond(writer, status, payload, keep_alive, extra=extra)
        elif path == "/healthz" and method in ("GET", "HEAD"):
            ok, details = self._health()
            await self._respond(writer, 200 if ok else 503, details, keep_alive)
        elif path == "/metrics" and method in ("GET", "HEAD"):
            await self._respond_raw(
                writer,
                200,
                self._metrics.exposition(),
                "text/plain; version=0.0.4; charset=utf-8",
                keep_alive,
            )
        else:
            await self._respond(writer, 404, {"error": "not found"}, keep_alive)
        return keep_alive

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        limit = self._config.max_body_bytes
        timeout = self._config.idle_timeout_s
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _BadRequest(400, "bad chunk size") from None
                if size == 0:
                    # Trailers (rarely sent) end with an empty line.
                    while (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)) != b"\r\n":
                        pass
                    return b"".join(chunks)
                total += size
                if total > limit:
                    raise _BadRequest(413, f"body larger than {limit} bytes")
                chunks.append(await asyncio.wait_for(reader.readexactly(size), timeout))
                await asyncio.wait_for(reader.readexactly(2), timeout)
        length_text = headers.get("content-length")
        if length_text is None:
            return b""
        try:
            length = int(length_text)
        except ValueError:
            raise _BadRequest(400, "bad Content-Length") from None
        if length < 0:
            raise _BadRequest(400, "bad Content-Length")
        if length > limit:
            raise _BadRequest(413, f"body larger than {limit} bytes")
        return await asyncio.wait_for(reader.readexactly(length), timeout)

    async def _post_clicks(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        retry = {"Retry-After": str(self._config.retry_after_s)}
        if not self._accepting:
            return 503, {"error": "shutting down"}, retry
        if not body.strip():
            return 400, {"error": "empty body"}, {}
        skipped: Counter[str] = Counter()
        records = self._records(body, skipped)
        payloads = self._intake.prepare(SOURCE, records, skipped=skipped)
        try:
            await self._intake.submit(SOURCE, payloads, self._config.full_wait_s)
        except SpoolFull:
            for _ in payloads:
                self._metrics.dropped.labels(SOURCE, "spool_full_refused").inc()
            return 503, {"error": "spool full"}, retry
        except SpoolClosed:
            return 503, {"error": "shutting down"}, retry
        except OSError as exc:
            log.error("spool_write_failed", error=str(exc))
            return 503, {"error": "spool unavailable"}, retry
        return (
            202,
            {
                "accepted": len(payloads),
                "skipped": sum(skipped.values()),
                "reasons": dict(skipped),
            },
            {},
        )

    def _records(self, body: bytes, skipped: Counter[str]) -> list[Any]:
        stripped = body.lstrip()
        if stripped[:1] in (b"[", b"{"):
            try:
                value = json.loads(body)
            except UnicodeDecodeError:
                value = None
            except (ValueError, RecursionError):
                # Not one JSON document: NDJSON, handled line by line below.
                value = None
            if isinstance(value, list):
                return value
            if value is not None:
                return [value]
        records = []
        for line in body.splitlines():
            if not line.strip():
                continue
            value = self._intake.parse_line(SOURCE, line, skipped)
            if value is not None:
                records.append(value)
        return records

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: dict[str, Any],
        keep_alive: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        await self._respond_raw(writer, status, body, "application/json", keep_alive, extra)

    async def _respond_raw(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        keep_alive: bool,
        extra: dict[str, str] | None = None,
    ) -> None:
        lines = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: keep-alive" if keep_alive else "Connection: close",
        ]
        lines.extend(f"{k}: {v}" for k, v in (extra or {}).items())
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()


def _parse_head(head: bytes) -> tuple[str, str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(400, "bad header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], parts[2], headers
