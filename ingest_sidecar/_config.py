"""The sidecar's configuration: a TOML file, overridden by ``ELIDO_SIDECAR_*`` variables.

Every setting lives in a small frozen dataclass per concern; :func:`load_config` builds them
from the file's tables (``[http]``, ``[tail]``, ``[extract]``, ``[spool]``, ``[stream]``,
``[log]``) and then applies environment overrides named ``ELIDO_SIDECAR_<TABLE>_<KEY>``
(e.g. ``ELIDO_SIDECAR_STREAM_TARGET=forwarder:50051``). The bearer token is never a plain
setting: it is read from ``stream.token_file`` or from ``ELIDO_SIDECAR_STREAM_TOKEN``, and
held in a :class:`Secret` so that it cannot leak through a repr.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_type_hints

ENV_PREFIX: Final = "ELIDO_SIDECAR_"
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    """The configuration file or an override is invalid."""


class FullPolicy(enum.StrEnum):
    """What the spool does when it reaches its size bound."""

    # Producers wait (the HTTP input answers 503 with Retry-After); nothing is lost.
    BLOCK = "block"
    # The oldest segment is deleted, acked or not, and its clicks are counted as dropped.
    DROP_OLDEST = "drop_oldest"


class Secret:
    """A credential that prints as ``Secret('***')``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The raw value, for the one place that needs it (the gRPC metadata)."""
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The loopback HTTP input, health and metrics endpoint."""

    host: str = "127.0.0.1"
    port: int = 8788
    # Largest request body taken; larger ones get 413. Parsed JSON takes several times its
    # size in memory, so this bounds the sidecar's RSS too.
    max_body_bytes: int = 1024 * 1024
    # How long a request waits for spool space before answering 503 with Retry-After.
    full_wait_s: float = 1.0
    retry_after_s: int = 1
    # Idle keep-alive connections are closed after this.
    idle_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class TailConfig:
    """An optional JSON-lines access log to tail (nginx ``escape=json``, Envoy JSON)."""

    # Empty disables the tailer.
    path: str = ""
    # Where the read position is checkpointed; default ``<spool.directory>/tail.checkpoint``.
    checkpoint_path: str = ""
    poll_interval_s: float = 0.1
    # Longer lines are skipped whole (counted as ``line_too_long``).
    max_line_bytes: int = 64 * 1024
    # Click field -> dotted path in the log's JSON object. Unmapped fields use their own name.
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExtractConfig:
    """How clicks and identifiers are read from records and destination URLs."""

    # Query parameter that may carry the click id (used when the record has none).
    click_id_parameter: str = "elido_click_id"
    email_parameters: tuple[str, ...] = ("email", "utm_email", "elido_email")
    phone_parameters: tuple[str, ...] = ("phone", "phone_number")
    external_id_parameters: tuple[str, ...] = ("external_id",)
    kx_parameter: str = "_kx"
    # Forward clicks without any identifier so that the server counts them (default: drop).
    forward_anonymous: bool = False


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    """The on-disk spool."""

    directory: str = "var/sidecar-spool"
    segment_bytes: int = 16 * 1024 * 1024
    max_bytes: int = 512 * 1024 * 1024
    full_policy: FullPolicy = FullPolicy.BLOCK
    # Group commit: appends wait at most this long for the fsync that covers them.
    fsync_interval_ms: float = 5.0
    # Disables fsync (benchmarks of the rest of the path only; never in production).
    fsync: bool = True


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """The StreamClicks connection to the forwarder."""

    # host:port of the forwarder; empty disables streaming (clicks stay spooled).
    target: str = ""
    token: Secret = field(default_factory=lambda: Secret(""))
    token_file: str = ""
    tls: bool = False
    ca_file: str = ""
    # Client certificate and key for mTLS.
    cert_file: str = ""
    key_file: str = ""
    # Overrides the TLS server name (e.g. when dialling an IP).
    server_name: str = ""
    batch_max_clicks: int = 500
    batch_linger_ms: float = 20.0
    # Batches sent and not yet acknowledged.
    window_batches: int = 8
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    # Service name asked of grpc.health.v1 before streaming; NOT_SERVING defers the stream.
    health_service: str = "elido.forwarder.v1.ForwarderService"
    # A stream with no acknowledgement for this long while batches are in flight is restarted.
    ack_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging."""

    level: str = "info"
    json: bool = True
    # Per-reason rate limit of "skipped bad input" log lines.
    bad_input_logs_per_minute: int = 30


@dataclass(frozen=True, slots=True)
class SidecarConfig:
    """Everything the sidecar needs."""

    http: HttpConfig = field(default_factory=HttpConfig)
    tail: TailConfig = field(default_factory=TailConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # Graceful shutdown: how long to wait for in-flight acks after the inputs have stopped.
    shutdown_grace_s: float = 5.0

    @property
    def tail_checkpoint_path(self) -> Path:
        """Where the tailer keeps its position."""
        if self.tail.checkpoint_path:
            return Path(self.tail.checkpoint_path)
        return Path(self.spool.directory) / "tail.checkpoint"


_SECTIONS: Final[dict[str, type[Any]]] = {
    "http": HttpConfig,
    "tail": TailConfig,
    "extract": ExtractConfig,
    "spool": SpoolConfig,
    "stream": StreamConfig,
    "log": LogConfig,
}


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """``value`` (from TOML or an env string) converted to the field's type."""
    from_env = isinstance(value, str)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if from_env and value.lower() in ("1", "true", "yes", "on"):
                return True
            if from_env and value.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if hint is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if hint is FullPolicy:
            return FullPolicy(value)
        if hint is Secret:
            if not isinstance(value, str):
                raise ValueError("not a string")
            return Secret(value)
        if hint == tuple[str, ...]:
            items = value.split(",") if from_env else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise ValueError("not a list of strings")
            return tuple(i.strip() for i in items if i.strip())
        if hint == Mapping[str, str]:
            if from_env:
                pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                value = {k.strip(): v.strip() for k, v in pairs}
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError("not a table of strings")
            return dict(value)
    except (ValueError, TypeError) as exc:
        # The value itself is left out: it may be a token.
        raise ConfigError(f"{name}: invalid value for {hint!r}") from exc
    raise ConfigError(f"{name}: unsupported type {hint!r}")


def _build(section: str, cls: type[Any], table: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(table) - known
    if unknown:
        raise ConfigError(f"[{section}]: unknown keys {sorted(unknown)}")
    values: dict[str, Any] = {}
    for name in known:
        key = f"{section}.{name}"
        env_name = f"{ENV_PREFIX}{section.upper()}_{name.upper()}"
        if env_name in env:
            values[name] = _coerce(f"{env_name} ({key})", hints[name], env[env_name])
        elif name in table:
            if name == "token":
                raise ConfigError("stream.token: put the token in token_file or the environment")
            values[name] = _coerce(key, hints[name], table[name])
    return cls(**values)


def load_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> SidecarConfig:
    """The configuration from the TOML file at ``path`` (optional) and ``env`` overrides."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    unknown = set(raw) - set(_SECTIONS) - {"shutdown_grace_s"}
    if unknown:
        raise ConfigError(f"unknown tables {sorted(unknown)}")
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = _build(name, cls, table, env)
    grace_env = env.get(f"{ENV_PREFIX}SHUTDOWN_GRACE_S")
    grace = raw.get("shutdown_grace_s", 5.0) if grace_env is None else grace_env
    grace_name = "shutdown_grace_s" if grace_env is None else f"{ENV_PREFIX}SHUTDOWN_GRACE_S"
    config = SidecarConfig(**sections, shutdown_grace_s=_coerce(grace_name, float, grace))
    stream: StreamConfig = config.stream
    if not stream.token and stream.token_file:
        try:
            token = Path(stream.token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"stream.token_file: cannot read: {exc.strerror}") from exc
        config = dataclasses.replace(
            config, stream=dataclasses.replace(stream, token=Secret(token))
        )
    validate(config)
    return config


def validate(config: SidecarConfig) -> None:
    """Raises :class:`ConfigError` for settings that cannot work together."""
    spool = config.spool
    if spool.segment_bytes < 4096:
        raise ConfigError("spool.segment_bytes must be at least 4096")
    if spool.max_bytes < 2 * spool.segment_bytes:
        raise ConfigError("spool.max_bytes must be at least twice spool.segment_bytes")
    if not 1 <= config.stream.batch_max_clicks <= 1000:
        raise ConfigError("stream.batch_max_clicks must be 1-1000 (the server's batch limit)")
    if config.stream.window_batches < 1:
        raise ConfigError("stream.window_batches must be at least 1")
    if config.stream.backoff_initial_s <= 0 or config.stream.backoff_max_s <= 0:
        raise ConfigError("stream backoff must be positive")
    if not 0 <= config.http.port <= 65535:
        raise ConfigError("http.port must be 0-65535")
    if config.stream.cert_file and not config.stream.key_file:
        raise ConfigError("stream.cert_file needs stream.key_file (mTLS)")
    if config.log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"log.level must be one of {', '.join(LOG_LEVELS)}")
    positive = {
        "http.max_body_bytes": config.http.max_body_bytes,
        "http.idle_timeout_s": config.http.idle_timeout_s,
        "tail.poll_interval_s": config.tail.poll_interval_s,
        "tail.max_line_bytes": config.tail.max_line_bytes,
        "stream.ack_timeout_s": config.stream.ack_timeout_s,
    }
    for name, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{name} must be positive")
    not_negative = {
        "http.full_wait_s": config.http.full_wait_s,
        "http.retry_after_s": config.http.retry_after_s,
        "spool.fsync_interval_ms": config.spool.fsync_interval_ms,
        "stream.batch_linger_ms": config.stream.batch_linger_ms,
        "log.bad_input_logs_per_minute": config.log.bad_input_logs_per_minute,
        "shutdown_grace_s": config.shutdown_grace_s,
    }
    for name, value in not_negative.items():
        if not value >= 0:
            raise ConfigError(f"{name} must not be negative")
    if not config.spool.directory:
        raise ConfigError("spool.directory must be set")
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(config.stream, name)
        if path:
            try:
                with open(path, "rb"):
                    pass
            except OSError as exc:
                raise ConfigError(f"stream.{name}: cannot read {path}: {exc.strerror}") from None
