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

from server import _tracing as tracing
from server._auth import TokenRegistry
from server._config import ConfigError, ForwarderConfig
from server._interceptors import (
    AuthInterceptor,
    ObservabilityInterceptor,
    StreamLimitInterceptor,
    grpc_receive_limit,
)
from server._metrics import (
    ACTIVE_LEASES,
    HOUSEKEEPING_LAST_SUCCESS,
    OUTBOX_DEPTH,
    OUTBOX_FAILED,
    STORE_UP,
    VAULT_UP,
    record_build_info,
)
from server._reload import ReloadableServerCredentials, Reloader, load_tls, load_tokens
from server.api._audit import AuditLog
from server.api._service import ForwarderService
from server.delivery._engine import DeliveryEngine
from server.delivery._klaviyo import KlaviyoClient
from server.intake._workers import IntakeWorkers
from server.store import SqliteConfig, open_store
from server.vault import KeyVault

_log = structlog.get_logger(__name__)
SERVICE_NAME: Final = forwarder_pb2.DESCRIPTOR.services_by_name["ForwarderService"].full_name
HOUSEKEEPING_INTERVAL_S: Final = 10.0
PRUNE_INTERVAL_S: Final = 3600.0
HOUSEKEEPING_LEASE: Final = "housekeeping"


class Forwarder:
    """The running service; :meth:`start` then :meth:`stop`."""

    def __init__(self, config: ForwarderConfig) -> None:
        self._config = config
        self.store = open_store(config.store)
        self.vault = KeyVault(config.vault)
        self._client = KlaviyoClient(config.klaviyo)
        self.delivery = DeliveryEngine(self.store, self.vault, self._client, config.delivery)
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # re-exported at runtime, not in its stubs
        self._server: grpc.aio.Server | None = None
        # Worker processes validate and commit StreamClicks batches on connections of their
        # own (the backend's click writer): per click validation costs more than gRPC.
        self._workers = (
            IntakeWorkers(config.store, config.server.intake_workers)
            if config.server.intake_workers
            else None
        )
        self._housekeeping: asyncio.Task[None] | None = None
        self._reloader: Reloader | None = None
        self.port = 0

    def reload(self) -> bool:
        """Re-read the token file and the TLS files (SIGHUP); False if any part failed."""
        if self._reloader is None:
            _log.warning("reload ignored: the forwarder is not serving yet")
            return False
        return self._reloader.reload()

    async def start(self) -> int:
        """Open everything and start serving; returns the bound port.

        Raises :class:`ConfigError` (naming the variable) for unusable files or addresses.
        """
        cfg = self._config.server
        # Files first: a bad token file or certificate must stop start-up before anything opens.
        tokens: TokenRegistry = load_tokens(cfg.tokens_file)
        tls_credentials = (
            ReloadableServerCredentials(load_tls(cfg.tls)) if cfg.tls is not None else None
        )
        try:
            tracing.configure()  # before anything starts: a bad OTEL_* setting stops here
        except tracing.TracingConfigError as exc:
            raise ConfigError([str(exc)]) from None
        await self.store.open()  # applies migrations before any worker opens the file
        if self._config.audit.hmac_key is None:
            _log.info(
                "audit: erasure entries record identifier counts only "
                "(set FORWARDER_AUDIT_HMAC_KEY to record keyed hashes)"
            )
        if self._workers is not None:
            await self._workers.start()
        # Vault may be down now; intake must work anyway, so this never blocks on it.
        await self.vault.start()
        await self.delivery.start()
        limit = cfg.max_message_bytes
        server = grpc.aio.server(
            interceptors=[
                *tracing.server_interceptors(),
                ObservabilityInterceptor(limit),
                AuthInterceptor(tokens),
                StreamLimitInterceptor(cfg.max_streams_per_caller, cfg.stream_idle_timeout_s),
            ],
            options=[
                # Above the limit: the interceptor refuses with details, logs and counts.
                ("grpc.max_receive_message_length", grpc_receive_limit(limit)),
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
            ForwarderService(
                self.store,
                self.vault,
                self.delivery,
                self._workers,
                AuditLog(self.store, tokens, self._config.audit.hmac_key),
                klaviyo=self._client,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            self.port = self._bind(server, tls_credentials)
        except ConfigError:
            await self.stop()  # everything above is open: close it before reporting
            raise
        await server.start()
        self._server = server
        self._reloader = Reloader(cfg, tokens, tls_credentials)
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        record_build_info()
        ACTIVE_LEASES.set_function(lambda: self.delivery.active_leases)
        self._housekeeping = asyncio.create_task(self._housekeep(), name="housekeeping")
        if cfg.port_file is not None:
            cfg.port_file.write_text(str(self.port))
        _log.info(
            "forwarder listening",
            listen=cfg.listen,
            port=self.port,
            tls=cfg.tls is not None,
            store=str(self._config.store.path)
            if isinstance(self._config.store, SqliteConfig)
            else self._config.store.redacted_url(),
        )
        return self.port

    def _bind(
        self, server: grpc.aio.Server, tls_credentials: ReloadableServerCredentials | None
    ) -> int:
        """Bind the gRPC port and the metrics endpoint; ConfigError naming the variable."""
        cfg = self._config.server
        try:
            if tls_credentials is None:
                port = server.add_insecure_port(cfg.listen)
            else:
                port = server.add_secure_port(cfg.listen, tls_credentials.credentials)
        except RuntimeError as exc:
            raise ConfigError(
                [f"FORWARDER_LISTEN: cannot listen on {cfg.listen} ({exc})"]
            ) from None
        if cfg.metrics_listen:
            host, _, metrics_port = cfg.metrics_listen.rpartition(":")
            try:
                start_http_server(int(metrics_port), addr=host.strip("[]") or "127.0.0.1")
            except OSError as exc:
                raise ConfigError(
                    [
                        f"FORWARDER_METRICS_LISTEN: cannot listen on {cfg.metrics_listen}"
                        f" ({exc.strerror or exc})"
                    ]
                ) from None
        return port

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
        tracing.shutdown()
        _log.info("stopped")

    async def _housekeep(self) -> None:
        last_prune = 0.0
        while True:
            try:
                try:
                    queued, failed = await self.store.outbox_depth()
                except Exception:
                    STORE_UP.set(0)
                    raise
                STORE_UP.set(1)
                OUTBOX_DEPTH.set(queued)
                OUTBOX_FAILED.set(failed)
                VAULT_UP.set(1 if await self.vault.healthy() else 0)
                HOUSEKEEPING_LAST_SUCCESS.set_to_current_time()
                now = time.time()
                if now - last_prune > PRUNE_INTERVAL_S:
                    last_prune = now
                    await self._prune(now)
            except Exception as exc:
                _log.warning("housekeeping failed", error=str(exc))
            await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)

    async def _prune(self, now: float) -> None:
        # Once per interval across all replicas: whoever takes the lease prunes, and keeps
        # it for the interval so that the others skip their turn.
        if await self.store.acquire_lease(
            HOUSEKEEPING_LEASE, self.delivery.owner, PRUNE_INTERVAL_S
        ):
            pruned = await self.store.prune(now)
            if pruned:
                _log.info("click index pruned", entries=pruned)
            expired = await self.store.prune_audit(now - self._config.audit.retention_s)
            if expired:
                _log.info("audit trail pruned", entries=expired)


async def serve(config: ForwarderConfig) -> None:
    """Run until SIGTERM or SIGINT, then drain gracefully; SIGHUP reloads rotated material."""
    forwarder = Forwarder(config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Before start: a SIGHUP sent as soon as the port is announced must not kill the process.
    loop.add_signal_handler(signal.SIGHUP, forwarder.reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await forwarder.start()
    await stopping.wait()
    await forwarder.stop()
