"""Assembles the forwarder (store, key vault, delivery, gRPC) and runs it until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Final

import grpc
import structlog
from elido.forwarder.v1 import forwarder_pb2, forwarder_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from server._auth import TokenRegistry
from server._config import ConfigError, ForwarderConfig
from server._interceptors import AuthInterceptor, ObservabilityInterceptor, StreamLimitInterceptor
from server._metrics import OUTBOX_DEPTH, OUTBOX_FAILED
from server.api._service import ForwarderService
from server.delivery._engine import DeliveryEngine
from server.delivery._klaviyo import KlaviyoClient
from server.intake._payload import decode_payload
from server.intake._workers import IntakeWorkers
from server.store import SqliteStore
from server.vault import KeyVault

_log = structlog.get_logger(__name__)
SERVICE_NAME: Final = forwarder_pb2.DESCRIPTOR.services_by_name["ForwarderService"].full_name
HOUSEKEEPING_INTERVAL_S: Final = 10.0
PRUNE_INTERVAL_S: Final = 3600.0


class Forwarder:
    """The running service; :meth:`start` then :meth:`stop`."""

    def __init__(self, config: ForwarderConfig) -> None:
        self._config = config
        self.store = SqliteStore(config.store, decode_payload)
        self.vault = KeyVault(config.vault)
        self._client = KlaviyoClient(config.klaviyo)
        self.delivery = DeliveryEngine(self.store, self.vault, self._client, config.delivery)
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # re-exported at runtime, not in its stubs
        self._server: grpc.aio.Server | None = None
        self._workers = (
            IntakeWorkers(config.store, config.server.intake_workers)
            if config.server.intake_workers
            else None
        )
        self._housekeeping: asyncio.Task[None] | None = None
        self.port = 0

    def _tokens(self) -> TokenRegistry:
        path = self._config.server.tokens_file
        if path is None:
            raise ConfigError("FORWARDER_TOKENS_FILE is required: every RPC needs a bearer token")
        try:
            return TokenRegistry.from_file(path)
        except OSError as exc:
            raise ConfigError(
                f"FORWARDER_TOKENS_FILE: cannot read {path}: {exc.strerror}"
            ) from None

    async def start(self) -> int:
        """Open everything and start serving; returns the bound port."""
        cfg = self._config.server
        tokens = self._tokens()
        await self.store.open()  # applies migrations before any worker opens the file
        if self._workers is not None:
            await self._workers.start()
        # Vault may be down now; intake must work anyway, so this never blocks on it.
        await self.vault.start()
        await self.delivery.start()
        limit = cfg.max_message_bytes
        server = grpc.aio.server(
            interceptors=[
                ObservabilityInterceptor(),
                AuthInterceptor(tokens),
                StreamLimitInterceptor(cfg.max_streams_per_caller, cfg.stream_idle_timeout_s),
            ],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
                # Ping silent connections; one whose peer does not answer within 20 s is closed
                # and its streams end, so a vanished client holds nothing for long.
                ("grpc.keepalive_time_ms", int(cfg.keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.keepalive_permit_without_calls", 1),
                # Clients may ping as often as every 10 s (the client library's keepalive).
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        forwarder_pb2_grpc.add_ForwarderServiceServicer_to_server(
            ForwarderService(self.store, self.vault, self.delivery, self._workers), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        if cfg.tls is None:
            self.port = server.add_insecure_port(cfg.listen)
        else:
            credentials = grpc.ssl_server_credentials(
                [(cfg.tls.key_file.read_bytes(), cfg.tls.cert_file.read_bytes())],
                root_certificates=cfg.tls.client_ca_file.read_bytes()
                if cfg.tls.client_ca_file
                else None,
                require_client_auth=cfg.tls.client_ca_file is not None,
            )
            self.port = server.add_secure_port(cfg.listen, credentials)
        await server.start()
        self._server = server
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_listen:
            host, _, port = cfg.metrics_listen.rpartition(":")
            start_http_server(int(port), addr=host or "127.0.0.1")
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        if cfg.port_file is not None:
            cfg.port_file.write_text(str(self.port))
        _log.info(
            "forwarder listening",
            listen=cfg.listen,
            port=self.port,
            tls=cfg.tls is not None,
            db=str(self._config.store.path),
        )
        return self.port

    async def stop(self) -> None:
        """Drain: report NOT_SERVING, let in-flight RPCs finish within the grace, close."""
        grace = self._config.server.grace_s
        _log.info("draining", grace_s=grace)
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        if self._workers is not None:
            await self._workers.close()
        await self.delivery.stop()
        await self._client.aclose()
        await self.vault.close()
        await self.store.close()
        _log.info("stopped")

    async def _housekeep(self) -> None:
        last_prune = 0.0
        while True:
            try:
                queued, failed = await self.store.outbox_depth()
                OUTBOX_DEPTH.set(queued)
                OUTBOX_FAILED.set(failed)
                now = time.time()
                if now - last_prune > PRUNE_INTERVAL_S:
                    pruned = await self.store.prune(now)
                    last_prune = now
                    if pruned:
                        _log.info("click index pruned", entries=pruned)
            except Exception as exc:
                _log.warning("housekeeping failed", error=str(exc))
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)


async def serve(config: ForwarderConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully."""
    forwarder = Forwarder(config)
    await forwarder.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await forwarder.stop()
