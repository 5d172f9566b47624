"""The loopback HTTP/1.1 endpoint: click input, health and metrics.

The protocol is `h11`'s (a small, strict, well-tested state machine without I/O), driven by
asyncio streams here: the sidecar's memory budget (<= 50 MB RSS, of which gRPC alone takes
~30 MB) leaves no room for a framework, and the edge proxy needs only ``POST`` with
``Content-Length`` or chunked bodies and keep-alive. Two things are stricter than h11 on
purpose: a bare ``\\n`` line ending (in the head or a chunk line) is a 400, never a request
read differently from how the proxy in front may have read it, and never a wait for a
``\\r\\n`` that will not come.

- ``POST /v1/clicks``: a JSON object, a JSON array of objects, or NDJSON. 202 once every
  taken click is fsynced in the spool, with ``{"accepted": n, "skipped": m, "reasons": {...}}``;
  503 with ``Retry-After`` when the spool is full (nothing of the request is taken then).
- ``GET /healthz``: 200 while the sidecar takes clicks, with the stream's state.
- ``GET /metrics``: Prometheus exposition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

import h11
import orjson
import structlog

from . import _tracing
from ._config import HttpConfig
from ._intake import Intake
from ._metrics import Metrics
from ._spool import SpoolClosed, SpoolFull

log = structlog.get_logger(__name__)

MAX_HEADER_BYTES: Final = 32 * 1024
READ_BYTES: Final = 256 * 1024
SOURCE: Final = "http"
_REASONS: Final = {
    200: b"OK",
    202: b"Accepted",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    503: b"Service Unavailable",
}
_CLICK_PATHS: Final = (b"/v1/clicks", b"/clicks")


class _BadRequest(Exception):
    """A request answered with ``status`` and closed (its framing cannot be trusted)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Closed(Exception):
    """The client went away or idled out: nothing to answer."""


def _has_bare_lf(data: bytes) -> bool:
    return data.count(b"\n") != data.count(b"\r\n")


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
            self._serve, self._config.host, self._config.port, limit=READ_BYTES
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

    # -- connection ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            while await self._one_request(conn, reader, writer, task):
                conn.start_next_cycle()
        except _BadRequest as exc:
            self._metrics.http_errors.labels(str(exc.status)).inc()
            with contextlib.suppress(ConnectionError):
                await self._write_error(writer, exc.status, str(exc))
        except (_Closed, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._busy.discard(task)
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        """The next h11 event, reading as needed; protocol errors become :class:`_BadRequest`."""
        while True:
            if conn.their_state is h11.IDLE:
                # A request head not yet parsed: h11 would take bare LF line endings.
                pending = conn.trailing_data[0]
                end = pending.find(b"\r\n\r\n")
                head = pending if end < 0 else pending[:end]
                if _has_bare_lf(head):
                    raise _BadRequest(400, "bare LF line ending (use CRLF)")
                # h11 bounds only a head still incomplete; one that arrived whole is bounded here.
                if len(head) > MAX_HEADER_BYTES:
                    raise _BadRequest(431, "request head larger than 32 KiB")
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _BadRequest(exc.error_status_hint, str(exc) or "bad request") from None
            if event is not h11.NEED_DATA:
                return event
            if conn.their_state is h11.SEND_BODY and b"\n" in conn.trailing_data[0]:
                # Mid chunked body h11 waits for a chunk line's CRLF; a complete line would
                # have been consumed, so an LF here is a bare one.
                raise _BadRequest(400, "bare LF line ending in chunked body (use CRLF)")
            try:
                data = await asyncio.wait_for(reader.read(READ_BYTES), self._config.idle_timeout_s)
            except TimeoutError:
                if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                    raise _Closed from None
                raise _BadRequest(408, "request incomplete before the idle timeout") from None
            conn.receive_data(data)

    async def _one_request(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        task: asyncio.Task[None],
    ) -> bool:
        """Serves one request; True to keep the connection open for the next."""
        event = await self._next_event(conn, reader)
        if isinstance(event, h11.ConnectionClosed):
            return False
        assert isinstance(event, h11.Request)
        self._busy.add(task)
        try:
            body = await self._read_body(conn, reader, writer, event)
            answer = self._route(event, body)
            # The body (up to max_body_bytes) and its records are dropped as soon as the clicks
            # are extracted, not held while the append waits for its fsync.
            del body
            status, payload, extra, content_type = await answer
            if event.method == b"HEAD":
                payload = b""
            headers = [
                (b"Content-Type", content_type),
                (b"Content-Length", b"%d" % len(payload)),
                *extra,
            ]
            response = h11.Response(
                status_code=status, headers=headers, reason=_REASONS.get(status, b"")
            )
            data = conn.send(response)
            if payload and event.method != b"HEAD":
                data = (data or b"") + (conn.send(h11.Data(data=payload)) or b"")
            data = (data or b"") + (conn.send(h11.EndOfMessage()) or b"")
            writer.write(data)
            await writer.drain()
        finally:
            self._busy.discard(task)
        if status >= 400:
            self._metrics.http_errors.labels(str(status)).inc()
        # Not DONE when h11 decided the connection closes (Connection: close, HTTP/1.0).
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def _read_body(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
    ) -> bytes:
        limit = self._config.max_body_bytes
        for name, value in request.headers:
            if name == b"content-length" and int(value) > limit:
                # Refused before it is read: the body could be any size.
                raise _BadRequest(413, f"body larger than {limit} bytes")
        if conn.they_are_waiting_for_100_continue:
            writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        chunks: list[bytes] = []
        total = 0
        while True:
            event = await self._next_event(conn, reader)
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > limit:
                    raise _BadRequest(413, f"body larger than {limit} bytes")
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)
            else:
                raise _Closed

    # -- routes ----------------------------------------------------------------------------

    async def _route(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
        """(status, body, extra headers, content type) of the answer to ``request``."""
        path = request.target.split(b"?", 1)[0]
        method = request.method
        if path in _CLICK_PATHS:
            if method != b"POST":
                return 405, _json({"error": "use POST"}), [(b"Allow", b"POST")], _JSON
            # The coroutine holds what it needs: the body is dropped before the fsync wait.
            clicks = self._post_clicks(body)
            del body
            status, payload, extra = await _tracing.http_request(
                {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers}, clicks
            )
            return status, _json(payload), extra, _JSON
        if path == b"/healthz" and method in (b"GET", b"HEAD"):
            ok, details = self._health()
            return 200 if ok else 503, _json(details), [], _JSON
        if path == b"/metrics" and method in (b"GET", b"HEAD"):
            return 200, self._metrics.exposition(), [], b"text/plain; version=0.0.4; charset=utf-8"
        return 404, _json({"error": "not found"}), [], _JSON

    async def _post_clicks(
        self, body: bytes
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        retry = [(b"Retry-After", b"%d" % self._config.retry_after_s)]
        if not self._accepting:
            return 503, {"error": "shutting down"}, retry
        if not body.strip():
            return 400, {"error": "empty body"}, []
        skipped: Counter[str] = Counter()
        records = self._records(body, skipped)
        del body
        payloads = self._intake.prepare(SOURCE, records, skipped=skipped)
        del records
        try:
            await self._intake.submit(SOURCE, payloads, self._config.full_wait_s)
        except SpoolFull:
            self._metrics.dropped.labels(SOURCE, "spool_full_refused").inc(len(payloads))
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
            [],
        )

    def _records(self, body: bytes, skipped: Counter[str]) -> list[Any]:
        stripped = body.lstrip()
        if stripped[:1] in (b"[", b"{"):
            # One JSON document (an array, or one object)? NDJSON fails after its first line
            # and is taken line by line below.
            try:
                value = orjson.loads(body)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, list):
                return value
            if value is not None:
                return [value]
        return self._intake.parse_lines(SOURCE, body.splitlines(), skipped)

    async def _write_error(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        """Answers a request whose framing failed, outside h11 (its state is ERROR), and closes."""
        body = _json({"error": message})
        writer.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s"
            % (status, _REASONS.get(status, b"Error"), len(body), body)
        )
        await writer.drain()


_JSON: Final = b"application/json"


def _json(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload)
