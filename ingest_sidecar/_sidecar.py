"""Wires the inputs, the spool and the streamer together, and shuts them down in order."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from . import _tracing
from ._config import ConfigError, SidecarConfig
from ._extract import Extractor
from ._http import HttpServer
from ._intake import Intake
from ._metrics import Metrics
from ._ratelimit import LogLimiter
from ._spool import Spool
from ._stream import Streamer
from ._tail import Tailer

log = structlog.get_logger(__name__)


class Sidecar:
    """The running sidecar: ``await start()``, then ``await stop()`` (flushes)."""

    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.spool: Spool | None = None
        self.http: HttpServer | None = None
        self.streamer: Streamer | None = None
        self.tailer: Tailer | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def http_port(self) -> int:
        """The bound HTTP port (useful with ``http.port = 0``)."""
        assert self.http is not None
        return self.http.port

    async def start(self) -> None:
        """Opens the spool (recovering it), then starts streaming and the inputs."""
        config = self.config
        try:
            self.spool = await Spool.open(config.spool, self.metrics)
        except OSError as exc:
            raise ConfigError(
                f"spool.directory: cannot use {config.spool.directory}: {exc.strerror or exc}"
            ) from exc
        limiter = LogLimiter(config.log.bad_input_logs_per_minute, "ingest_sidecar.input")
        intake = Intake(Extractor(config.extract), self.spool, self.metrics, limiter)
        if config.stream.target:
            self.streamer = Streamer(
                config.stream, self.spool, self.metrics, config.log.bad_input_logs_per_minute
            )
            self._tasks["stream"] = asyncio.create_task(self.streamer.run(), name="stream")
        else:
            log.warning("streaming_disabled", reason="stream.target is empty")
        self.http = HttpServer(config.http, intake, self.metrics, self._health)
        try:
            await self.http.start()
        except OSError as exc:
            await self._abandon()
            raise ConfigError(
                f"http.host/http.port: cannot listen on {config.http.host}:{config.http.port}: "
                f"{exc.strerror or exc}"
            ) from exc
        if config.tail.path:
            self.tailer = Tailer(config.tail, config.tail_checkpoint_path, intake, self.metrics)
            self._tasks["tail"] = asyncio.create_task(self.tailer.run(), name="tail")
        for task in self._tasks.values():
            task.add_done_callback(self._task_done)

    async def _abandon(self) -> None:
        """Undoes a start that failed half-way (the stream task, the spool)."""
        if self.streamer is not None:
            await self.streamer.stop(0)
        for task in self._tasks.values():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        if self.spool is not None:
            await self.spool.close()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Streaming and tailing handle their own failures; reaching here is a bug.
            log.error("task_failed", task=task.get_name(), error=repr(task.exception()))

    def _health(self) -> tuple[bool, dict[str, Any]]:
        spool = self.spool
        assert spool is not None
        failed = [name for name, task in self._tasks.items() if task.done()]
        ok = not failed and spool._sync_error is None
        return ok, {
            "status": "ok" if ok else "failing",
            "failed_tasks": failed,
            "stream_connected": bool(self.streamer and self.streamer.connected),
            "unacked_clicks": spool.unacked,
            "spool_bytes": spool.total_bytes,
        }

    async def stop(self) -> None:
        """Graceful shutdown: stop inputs, flush the spool, let acks catch up, close."""
        log.info("shutting_down")
        if self.tailer is not None:
            self.tailer.stop()
        if self.http is not None:
            await self.http.stop_intake()
        tail_task = self._tasks.get("tail")
        if tail_task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(tail_task, 5.0)
        stream_task = self._tasks.get("stream")
        if self.streamer is not None and stream_task is not None:
            grace = self.config.shutdown_grace_s
            await self.streamer.stop(grace)
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(stream_task, 2.0)
        if self.spool is not None:
            await self.spool.close()
        _tracing.shutdown()
        log.info("stopped", unacked_clicks=self.spool.unacked if self.spool else 0)

    async def run_until(self, stop: asyncio.Event) -> None:
        """Starts, waits for ``stop``, and shuts down."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
