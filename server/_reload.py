"""Rotation without restart: the token file and the TLS certificate and key, on SIGHUP.

A reload reads and checks the new material completely before using any of it; if anything is
wrong (unreadable file, bad JSON, a key that does not match its certificate) the old material
stays in force, and the log and ``forwarder_config_reload_total{material,result}`` say so.
Calls already admitted and TLS connections already established are never touched: tokens are
checked when a call starts, and a certificate is presented only during a handshake.
"""

from __future__ import annotations

import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
import structlog

from server._auth import TokenRegistry
from server._config import ServerConfig, TlsConfig
from server._env import ConfigError
from server._metrics import CONFIG_RELOADS

_log = structlog.get_logger(__name__)
_MAX_PEM_BYTES: Final = 1024 * 1024


def load_tokens(path: Path | None) -> TokenRegistry:
    """The token file's registry; :class:`ConfigError` naming FORWARDER_TOKENS_FILE if bad."""
    if path is None:
        raise ConfigError(
            ["FORWARDER_TOKENS_FILE is required: every RPC is authenticated against it"]
        )
    try:
        return TokenRegistry.from_file(path)
    except OSError as exc:
        raise ConfigError(
            [f"FORWARDER_TOKENS_FILE: cannot read {path}: {exc.strerror or exc}"]
        ) from None
    except ValueError as exc:
        raise ConfigError([f"FORWARDER_TOKENS_FILE: {exc}"]) from None


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """PEM bytes of the server's certificate chain and key, and the client CA bundle."""

    cert: bytes
    key: bytes
    client_ca: bytes | None

    def __repr__(self) -> str:  # the key is a secret
        return f"TlsMaterial(cert={len(self.cert)} bytes, client_ca={self.client_ca is not None})"

    def certificate_configuration(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(self.key, self.cert)], root_certificates=self.client_ca
        )


def _read(variable: str, path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{variable}: cannot read {path}: {exc.strerror or exc}"]) from None
    if len(data) > _MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise ConfigError([f"{variable}: {path} is not a PEM file"])
    return data


def load_tls(config: TlsConfig) -> TlsMaterial:
    """Read and check the TLS files; :class:`ConfigError` naming the variable if bad.

    Python's ``ssl`` module checks that the certificate parses and the key matches it before
    gRPC sees either: gRPC would accept them here and fail every handshake later.
    """
    cert = _read("FORWARDER_TLS_CERT", config.cert_file)
    key = _read("FORWARDER_TLS_KEY", config.key_file)
    client_ca = (
        _read("FORWARDER_TLS_CLIENT_CA", config.client_ca_file) if config.client_ca_file else None
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.cert_file, config.key_file)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            [
                f"FORWARDER_TLS_CERT, FORWARDER_TLS_KEY: {config.cert_file} and"
                f" {config.key_file} are not a certificate chain and its private key"
                f" ({getattr(exc, 'reason', None) or type(exc).__name__})"
            ]
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cadata=client_ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                [
                    f"FORWARDER_TLS_CLIENT_CA: {config.client_ca_file} holds no usable CA"
                    f" certificate ({getattr(exc, 'reason', None) or type(exc).__name__})"
                ]
            ) from None
    return TlsMaterial(cert=cert, key=key, client_ca=client_ca)


class ReloadableServerCredentials:
    """gRPC server credentials whose certificate and key can be replaced while serving.

    gRPC calls :meth:`_fetch` (from its own threads) before each new TLS handshake; it returns
    the new configuration once after :meth:`replace`, and None ("unchanged") otherwise.
    """

    def __init__(self, material: TlsMaterial) -> None:
        self._lock = threading.Lock()
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            material.certificate_configuration(),
            # None means "unchanged" at runtime; the stubs only know the other case.
            self._fetch,  # type: ignore[arg-type]
            require_client_authentication=material.client_ca is not None,
        )

    def replace(self, material: TlsMaterial) -> None:
        configuration = material.certificate_configuration()
        with self._lock:
            self._pending = configuration

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            pending, self._pending = self._pending, None
        return pending


class Reloader:
    """Re-reads the token file and the TLS files; keeps the old material on any failure."""

    def __init__(
        self,
        config: ServerConfig,
        tokens: TokenRegistry,
        credentials: ReloadableServerCredentials | None,
    ) -> None:
        self._config = config
        self._tokens = tokens
        self._credentials = credentials

    def reload(self) -> bool:
        """Reload everything; True if every part was reloaded."""
        ok = self._reload_tokens()
        if self._config.tls is not None and self._credentials is not None:
            ok = self._reload_tls(self._config.tls, self._credentials) and ok
        return ok

    def _reload_tokens(self) -> bool:
        try:
            registry = load_tokens(self._config.tokens_file)
        except ConfigError as exc:
            return self._failed("tokens", exc)
        self._tokens.replace(registry)
        CONFIG_RELOADS.labels(material="tokens", result="success").inc()
        _log.info("tokens reloaded", tokens=len(registry), path=str(self._config.tokens_file))
        return True

    def _reload_tls(self, tls: TlsConfig, credentials: ReloadableServerCredentials) -> bool:
        try:
            material = load_tls(tls)
        except ConfigError as exc:
            return self._failed("tls", exc)
        credentials.replace(material)
        CONFIG_RELOADS.labels(material="tls", result="success").inc()
        _log.info("tls certificate reloaded", cert=str(tls.cert_file))
        return True

    @staticmethod
    def _failed(material: str, exc: ConfigError) -> bool:
        CONFIG_RELOADS.labels(material=material, result="failure").inc()
        _log.error(
            "reload failed; the previous material stays in use",
            material=material,
            error="; ".join(exc.problems),
        )
        return False
