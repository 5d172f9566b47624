"""The forwarder's configuration: small frozen dataclasses, read once from the environment.

Every part's settings are parsed by its own function over one :class:`~server._env.Env`
(which collects every problem, one line each, naming the variable, and supports ``*_FILE``
for secrets); :func:`load_config` assembles them and raises :class:`ConfigError` listing every
problem. Every setting has an embedded default so that ``make run`` needs none; production
sets at least ``VAULT_ADDR`` with Vault credentials, and ``FORWARDER_TOKENS_FILE``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from server._env import ConfigError, Env
from server._logging import LogFormat
from server.delivery._config import DeliveryConfig, RetryPolicy
from server.delivery._klaviyo import KlaviyoConfig
from server.delivery._ratelimit import RateLimitConfig, RateWindow
from server.store import PostgresConfig, SqliteConfig, StoreConfig, is_postgres_url
from server.vault import VaultConfig
from server.vault._config import vault_config

__all__ = [
    "ConfigError",
    "ForwarderConfig",
    "ServerConfig",
    "TlsConfig",
    "load_config",
]

DEFAULT_LISTEN: Final = "127.0.0.1:50051"
# One per core, up to 8: past that the database's single writer is the limit.
DEFAULT_INTAKE_WORKERS: Final = min(8, os.cpu_count() or 1)
DEFAULT_POSTGRES_INTAKE_WORKERS: Final = min(16, 2 * (os.cpu_count() or 1))
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server TLS; with ``client_ca_file`` clients must present a certificate (mTLS).

    The files are read at start and again on SIGHUP (certificate rotation without restart).
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The gRPC endpoint."""

    listen: str = DEFAULT_LISTEN
    # Read at start and again on SIGHUP.
    tokens_file: Path | None = None
    tls: TlsConfig | None = None
    # Drain time on SIGTERM: in-flight RPCs finish, new ones are refused.
    grace_s: float = 10.0
    # Prometheus /metrics on its own loopback port; empty disables it.
    metrics_listen: str = ""
    # Larger messages are refused with RESOURCE_EXHAUSTED before any parsing.
    max_message_bytes: int = 4 * 1024 * 1024
    log_format: LogFormat = "json"
    log_level: str = "info"
    # Written with the bound port once listening (useful with port 0).
    port_file: Path | None = None
    # Worker processes that validate and commit StreamClicks batches (0: in this process).
    # One Python process uses one core at a time; workers let intake use the others.
    intake_workers: int = DEFAULT_INTAKE_WORKERS
    # Open StreamClicks streams one bearer token may hold; more answer RESOURCE_EXHAUSTED.
    max_streams_per_caller: int = 64
    # A stream that sends no batch for this long is ended (UNAVAILABLE, reason STREAM_IDLE).
    stream_idle_timeout_s: float = 120.0
    # HTTP/2 keepalive ping interval: a client that stops answering is dropped, with its streams.
    keepalive_s: float = 60.0


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """The audit trail of admin actions."""

    # Key of the HMAC-SHA256 that erasure entries record instead of the identifiers; None:
    # they record counts only. Never logged (``repr`` leaves it out).
    hmac_key: str | None = field(default=None, repr=False)
    # Entries older than this are pruned by the housekeeping.
    retention_s: float = 400 * 86400.0


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    """Everything the forwarder needs, passed explicitly to each part."""

    server: ServerConfig
    store: StoreConfig
    vault: VaultConfig
    klaviyo: KlaviyoConfig
    delivery: DeliveryConfig
    audit: AuditConfig = AuditConfig()


def _tls_config(env: Env) -> TlsConfig | None:
    cert, key = env.path("FORWARDER_TLS_CERT"), env.path("FORWARDER_TLS_KEY")
    client_ca = env.path("FORWARDER_TLS_CLIENT_CA")
    if not (cert or key):
        if client_ca:
            env.problem("FORWARDER_TLS_CLIENT_CA needs FORWARDER_TLS_CERT and FORWARDER_TLS_KEY")
        return None
    if not (cert and key):
        env.problem("FORWARDER_TLS_CERT and FORWARDER_TLS_KEY go together")
        return None
    return TlsConfig(cert, key, client_ca)


def _server_config(env: Env) -> ServerConfig:
    tokens_file = env.path("FORWARDER_TOKENS_FILE")
    if tokens_file is None:
        env.problem("FORWARDER_TOKENS_FILE is required: every RPC is authenticated against it")
    log_format = env.choice("FORWARDER_LOG_FORMAT", "json", ("json", "console"))
    return ServerConfig(
        listen=env.listen("FORWARDER_LISTEN", DEFAULT_LISTEN, unix=True),
        tokens_file=tokens_file,
        tls=_tls_config(env),
        grace_s=env.number("FORWARDER_GRACE_S", 10.0, minimum=0),
        metrics_listen=env.listen("FORWARDER_METRICS_LISTEN", "", default_host="127.0.0.1"),
        max_message_bytes=env.integer(
            "FORWARDER_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, minimum=1024, maximum=2**31 - 1
        ),
        log_format="json" if log_format == "json" else "console",
        log_level=env.choice("FORWARDER_LOG_LEVEL", "info", LOG_LEVELS),
        port_file=env.path("FORWARDER_PORT_FILE"),
        intake_workers=env.integer(
            "FORWARDER_INTAKE_WORKERS", DEFAULT_INTAKE_WORKERS, minimum=0, maximum=64
        ),
        max_streams_per_caller=env.integer("FORWARDER_MAX_STREAMS_PER_CALLER", 64, minimum=1),
        stream_idle_timeout_s=env.positive("FORWARDER_STREAM_IDLE_TIMEOUT_S", 120.0),
        keepalive_s=env.number("FORWARDER_KEEPALIVE_S", 60.0, minimum=1),
    )


def _sqlite_config(env: Env, window: float) -> SqliteConfig:
    data_dir = Path(env.text("FORWARDER_DATA_DIR", "var"))
    return SqliteConfig(
        path=env.path("FORWARDER_DB_PATH") or data_dir / "forwarder.db",
        synchronous=env.choice("FORWARDER_DB_SYNCHRONOUS", "FULL", ("FULL", "EXTRA", "NORMAL")),
        attribution_window_s=window,
        busy_timeout_ms=env.integer("FORWARDER_DB_BUSY_TIMEOUT_MS", 5000, minimum=0),
    )


def _store_config(env: Env) -> StoreConfig:
    """PostgreSQL when FORWARDER_DATABASE_URL (or its _FILE) is set, else the SQLite file."""
    window = env.positive("FORWARDER_ATTRIBUTION_WINDOW_S", 90 * 86400.0)
    url = env.secret("FORWARDER_DATABASE_URL")
    if url:
        if not is_postgres_url(url):
            # Never echo the value: it may hold a password.
            env.problem("FORWARDER_DATABASE_URL must be a postgresql:// URL")
        return PostgresConfig(
            url=url,
            pool_size=env.integer("FORWARDER_DB_POOL_SIZE", 10, minimum=1, maximum=200),
            attribution_window_s=window,
            statement_timeout_ms=env.integer(
                "FORWARDER_DB_STATEMENT_TIMEOUT_MS", 15000, minimum=100
            ),
        )
    return _sqlite_config(env, window)


def move_configs(env: Mapping[str, str]) -> tuple[SqliteConfig, PostgresConfig]:
    """The stores of ``elido-forwarder move-store``: the SQLite file (from the embedded
    settings) and the PostgreSQL database (FORWARDER_DATABASE_URL or its _FILE, required)."""
    reader = Env(env)
    target = _store_config(reader)
    source = _sqlite_config(reader, 90 * 86400.0)
    if not isinstance(target, PostgresConfig):
        reader.problem("FORWARDER_DATABASE_URL (or FORWARDER_DATABASE_URL_FILE) is required")
    reader.raise_problems()
    assert isinstance(target, PostgresConfig)  # raise_problems() raised otherwise
    return source, target


def _klaviyo_config(env: Env) -> KlaviyoConfig:
    base_url = env.text("KLAVIYO_BASE_URL", "https://a.klaviyo.com")
    if not base_url.startswith(("http://", "https://")):
        env.problem(f"KLAVIYO_BASE_URL must be an http:// or https:// URL, got {base_url!r}")
    return KlaviyoConfig(
        base_url=base_url,
        revision=env.text("KLAVIYO_REVISION", "2026-07-15"),
        timeout_s=env.positive("KLAVIYO_TIMEOUT_S", 10.0),
    )


def _delivery_config(env: Env) -> DeliveryConfig:
    def window(prefix: str, burst: int, steady: int) -> RateWindow:
        return RateWindow(
            env.integer(f"KLAVIYO_{prefix}_BURST_PER_S", burst, minimum=1),
            env.integer(f"KLAVIYO_{prefix}_STEADY_PER_MIN", steady, minimum=1),
        )

    limits = RateLimitConfig(events=window("EVENTS", 350, 3500), bulk=window("BULK", 10, 150))
    retry = RetryPolicy(
        base_s=env.positive("FORWARDER_RETRY_BASE_S", 0.5),
        max_delay_s=env.positive("FORWARDER_RETRY_MAX_DELAY_S", 60.0),
        max_age_s=env.positive("FORWARDER_RETRY_MAX_AGE_S", 24 * 3600.0),
    )
    return DeliveryConfig(
        enabled=env.choice("FORWARDER_DELIVERY", "on", ("on", "off")) == "on",
        single_threshold=env.integer("FORWARDER_SINGLE_THRESHOLD", 20, minimum=0),
        poll_interval_s=env.positive("FORWARDER_POLL_INTERVAL_S", 0.5),
        vault_retry_s=env.positive("FORWARDER_VAULT_RETRY_S", 5.0),
        instance_id=env.text("FORWARDER_INSTANCE_ID"),
        lease_ttl_s=env.positive("FORWARDER_LEASE_TTL_S", 30.0),
        retry=retry,
        rate_limits=limits,
    )


MIN_AUDIT_HMAC_KEY: Final = 32


def _audit_config(env: Env) -> AuditConfig:
    key = env.secret("FORWARDER_AUDIT_HMAC_KEY")
    if key is not None and len(key) < MIN_AUDIT_HMAC_KEY:
        env.problem(
            f"FORWARDER_AUDIT_HMAC_KEY must be at least {MIN_AUDIT_HMAC_KEY} characters "
            "(e.g. openssl rand -hex 32)"
        )
    days = env.integer("FORWARDER_AUDIT_RETENTION_DAYS", 400, minimum=1, maximum=36500)
    return AuditConfig(hmac_key=key, retention_s=days * 86400.0)


def load_config(env: Mapping[str, str]) -> ForwarderConfig:
    """Read the configuration; raises :class:`ConfigError` listing every bad variable."""
    reader = Env(env)
    server = _server_config(reader)
    store = _store_config(reader)
    if isinstance(store, PostgresConfig) and not reader.is_set("FORWARDER_INTAKE_WORKERS"):
        # A worker waits on PostgreSQL's round trips as much as it computes: twice as many
        # as cores keep the cores busy (bench/ingest.py: 33k/s with 2, 38k/s with 4 on 2 cores).
        server = dataclasses.replace(server, intake_workers=DEFAULT_POSTGRES_INTAKE_WORKERS)
    klaviyo = _klaviyo_config(reader)
    delivery = _delivery_config(reader)
    vault = vault_config(reader)
    audit = _audit_config(reader)
    reader.raise_problems()
    assert vault is not None  # None only with a problem recorded
    return ForwarderConfig(server, store, vault, klaviyo, delivery, audit)
