"""The forwarder's configuration: small frozen dataclasses, read once from the environment.

Every setting has an embedded default so that ``make run`` needs none; production sets at
least ``VAULT_ADDR`` with ``VAULT_TOKEN`` or AppRole credentials, and ``FORWARDER_TOKENS_FILE``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from server._logging import LogFormat
from server.delivery._config import DeliveryConfig, RetryPolicy
from server.delivery._klaviyo import KlaviyoConfig
from server.delivery._ratelimit import RateLimitConfig, RateWindow
from server.store import SqliteConfig
from server.vault import VaultConfig

DEFAULT_LISTEN: Final = "127.0.0.1:50051"
# One per core, up to 8: past that the database's single writer is the limit.
DEFAULT_INTAKE_WORKERS: Final = min(8, os.cpu_count() or 1)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server TLS; with ``client_ca_file`` clients must present a certificate (mTLS)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The gRPC endpoint."""

    listen: str = DEFAULT_LISTEN
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
class ForwarderConfig:
    """Everything the forwarder needs, passed explicitly to each part."""

    server: ServerConfig
    store: SqliteConfig
    vault: VaultConfig
    klaviyo: KlaviyoConfig
    delivery: DeliveryConfig


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = _number(env, name, default)
    if value != int(value):
        raise ConfigError(f"{name} must be a whole number")
    return int(value)


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw) if raw else None


def load_config(env: Mapping[str, str]) -> ForwarderConfig:
    """Read the configuration; raises :class:`ConfigError` naming the bad variable."""
    data_dir = Path(env.get("FORWARDER_DATA_DIR", "var"))
    log_format = env.get("FORWARDER_LOG_FORMAT", "json")
    if log_format not in ("json", "console"):
        raise ConfigError("FORWARDER_LOG_FORMAT must be json or console")
    tls: TlsConfig | None = None
    cert, key = _path(env, "FORWARDER_TLS_CERT"), _path(env, "FORWARDER_TLS_KEY")
    if cert or key:
        if not (cert and key):
            raise ConfigError("FORWARDER_TLS_CERT and FORWARDER_TLS_KEY go together")
        tls = TlsConfig(cert, key, _path(env, "FORWARDER_TLS_CLIENT_CA"))
    server = ServerConfig(
        listen=env.get("FORWARDER_LISTEN", DEFAULT_LISTEN),
        tokens_file=_path(env, "FORWARDER_TOKENS_FILE"),
        tls=tls,
        grace_s=_number(env, "FORWARDER_GRACE_S", 10.0),
        metrics_listen=env.get("FORWARDER_METRICS_LISTEN", ""),
        max_message_bytes=_int(env, "FORWARDER_MAX_MESSAGE_BYTES", 4 * 1024 * 1024),
        log_format="json" if log_format == "json" else "console",
        log_level=env.get("FORWARDER_LOG_LEVEL", "info"),
        port_file=_path(env, "FORWARDER_PORT_FILE"),
        intake_workers=_int(env, "FORWARDER_INTAKE_WORKERS", DEFAULT_INTAKE_WORKERS),
        max_streams_per_caller=_int(env, "FORWARDER_MAX_STREAMS_PER_CALLER", 64),
        stream_idle_timeout_s=_number(env, "FORWARDER_STREAM_IDLE_TIMEOUT_S", 120.0),
        keepalive_s=_number(env, "FORWARDER_KEEPALIVE_S", 60.0),
    )
    if server.max_streams_per_caller < 1:
        raise ConfigError("FORWARDER_MAX_STREAMS_PER_CALLER must be at least 1")
    if not server.stream_idle_timeout_s > 0 or not server.keepalive_s >= 1:
        raise ConfigError(
            "FORWARDER_STREAM_IDLE_TIMEOUT_S must be positive and FORWARDER_KEEPALIVE_S >= 1"
        )
    if not 0 <= server.intake_workers <= 64:
        raise ConfigError("FORWARDER_INTAKE_WORKERS must be between 0 and 64")
    synchronous = env.get("FORWARDER_DB_SYNCHRONOUS", "FULL").upper()
    if synchronous not in ("FULL", "NORMAL", "EXTRA"):
        raise ConfigError("FORWARDER_DB_SYNCHRONOUS must be FULL, EXTRA or NORMAL")
    store = SqliteConfig(
        path=_path(env, "FORWARDER_DB_PATH") or data_dir / "forwarder.db",
        synchronous=synchronous,
        attribution_window_s=_number(env, "FORWARDER_ATTRIBUTION_WINDOW_S", 90 * 86400.0),
        busy_timeout_ms=_int(env, "FORWARDER_DB_BUSY_TIMEOUT_MS", 5000),
    )
    klaviyo = KlaviyoConfig(
        base_url=env.get("KLAVIYO_BASE_URL", "https://a.klaviyo.com"),
        revision=env.get("KLAVIYO_REVISION", "2026-07-15"),
        timeout_s=_number(env, "KLAVIYO_TIMEOUT_S", 10.0),
    )
    limits = RateLimitConfig(
        events=RateWindow(
            _int(env, "KLAVIYO_EVENTS_BURST_PER_S", 350),
            _int(env, "KLAVIYO_EVENTS_STEADY_PER_MIN", 3500),
        ),
        bulk=RateWindow(
            _int(env, "KLAVIYO_BULK_BURST_PER_S", 10), _int(env, "KLAVIYO_BULK_STEADY_PER_MIN", 150)
        ),
    )
    retry = RetryPolicy(
        base_s=_number(env, "FORWARDER_RETRY_BASE_S", 0.5),
        max_delay_s=_number(env, "FORWARDER_RETRY_MAX_DELAY_S", 60.0),
        max_age_s=_number(env, "FORWARDER_RETRY_MAX_AGE_S", 24 * 3600.0),
    )
    delivery_switch = env.get("FORWARDER_DELIVERY", "on").lower()
    if delivery_switch not in ("on", "off"):
        raise ConfigError("FORWARDER_DELIVERY must be on or off")
    delivery = DeliveryConfig(
        enabled=delivery_switch == "on",
        single_threshold=_int(env, "FORWARDER_SINGLE_THRESHOLD", 20),
        poll_interval_s=_number(env, "FORWARDER_POLL_INTERVAL_S", 0.5),
        vault_retry_s=_number(env, "FORWARDER_VAULT_RETRY_S", 5.0),
        instance_id=env.get("FORWARDER_INSTANCE_ID", ""),
        retry=retry,
        rate_limits=limits,
    )
    if not env.get("VAULT_ADDR"):
        raise ConfigError("VAULT_ADDR is required (make run starts a local OpenBao and sets it)")
    return ForwarderConfig(server, store, VaultConfig.from_env(env), klaviyo, delivery)
