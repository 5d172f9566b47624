"""Opening gRPC channels and building the per-call metadata from a :class:`ClientConfig`.

The token travels as ``authorization`` metadata added to each call rather than as gRPC call
credentials, because call credentials are refused on plaintext channels and local
development (and mesh sidecars) run plaintext on loopback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import grpc
import grpc.aio

from client._config import ClientConfig, TlsConfig
from client._exceptions import ConfigError

USER_AGENT: Final = "elido-forwarder-client/0.1"

Metadata = tuple[tuple[str, str], ...]

# Keepalive pings find a dead connection (a restarted server behind a load balancer) before
# a call is sent on it; the values stay above gRPC servers' default minimum ping interval.
_OPTIONS: Final[list[tuple[str, str | int]]] = [
    ("grpc.primary_user_agent", USER_AGENT),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


def call_metadata(config: ClientConfig) -> Metadata:
    """The metadata every call carries: the bearer token, if there is one."""
    return (("authorization", f"Bearer {config.token}"),) if config.token else ()


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror}") from None


def _credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, "CA file") if tls.ca_file else None,
        private_key=_read(tls.key_file, "client key") if tls.key_file else None,
        certificate_chain=_read(tls.cert_file, "client certificate") if tls.cert_file else None,
    )


def _options(config: ClientConfig) -> list[tuple[str, str | int]]:
    options = list(_OPTIONS)
    if config.tls is not None and config.tls.server_name:
        options.append(("grpc.ssl_target_name_override", config.tls.server_name))
    return options


def open_aio_channel(config: ClientConfig) -> grpc.aio.Channel:
    """An asyncio channel to ``config.target``."""
    if config.tls is None:
        return grpc.aio.insecure_channel(config.target, options=_options(config))
    return grpc.aio.secure_channel(config.target, _credentials(config.tls), _options(config))


def open_sync_channel(config: ClientConfig) -> grpc.Channel:
    """A blocking channel to ``config.target``."""
    if config.tls is None:
        return grpc.insecure_channel(config.target, options=_options(config))
    return grpc.secure_channel(config.target, _credentials(config.tls), _options(config))
