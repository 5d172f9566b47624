"""Client configuration: where the forwarder is, how to authenticate, how patient to be.

Environment variables read by :meth:`ClientConfig.from_env`:

========================================  ===================================================
``ELIDO_FORWARDER_TARGET``                gRPC target, ``host:port`` (default
                                          ``localhost:50051``)
``ELIDO_FORWARDER_TOKEN``                 bearer token
``ELIDO_FORWARDER_TOKEN_FILE``            file holding the bearer token (preferred: it keeps
                                          the token out of the environment of child processes)
``ELIDO_FORWARDER_CA``                    PEM CA bundle to verify the server; enables TLS
``ELIDO_FORWARDER_CERT``                  PEM client certificate for mTLS (with ``_KEY``)
``ELIDO_FORWARDER_KEY``                   PEM private key of the client certificate
``ELIDO_FORWARDER_TLS``                   ``1``: TLS with the system's CA roots
``ELIDO_FORWARDER_INSECURE``              ``1``: allow a token over plaintext to a
                                          non-loopback target (e.g. behind a mesh sidecar)
``ELIDO_FORWARDER_TIMEOUT``               default deadline of a call in seconds (default 10)
========================================  ===================================================
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from client._exceptions import ConfigError
from client._retry import RetryPolicy

DEFAULT_TARGET: Final = "localhost:50051"
DEFAULT_TIMEOUT_S: Final = 10.0

ENV_TARGET: Final = "ELIDO_FORWARDER_TARGET"
# Names of variables, not secrets.
ENV_TOKEN: Final = "ELIDO_FORWARDER_TOKEN"  # noqa: S105
ENV_TOKEN_FILE: Final = "ELIDO_FORWARDER_TOKEN_FILE"  # noqa: S105
ENV_CA: Final = "ELIDO_FORWARDER_CA"
ENV_CERT: Final = "ELIDO_FORWARDER_CERT"
ENV_KEY: Final = "ELIDO_FORWARDER_KEY"
ENV_TLS: Final = "ELIDO_FORWARDER_TLS"
ENV_INSECURE: Final = "ELIDO_FORWARDER_INSECURE"
ENV_TIMEOUT: Final = "ELIDO_FORWARDER_TIMEOUT"

_TRUE: Final = frozenset({"1", "true", "yes", "on"})


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """TLS towards the server; with ``cert_file`` and ``key_file``, mutual TLS.

    Holds paths, not PEM contents, so that a repr never shows a private key; the files are
    read when the channel is opened. ``ca_file=None`` trusts the system's roots.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("mTLS needs both a client certificate and its key")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How to reach and authenticate to the forwarder.

    ``default_timeout_s`` is the deadline of every call that is not given its own (retries
    and their waits included). ``allow_insecure`` permits sending the token over plaintext
    to a target that is not loopback.
    """

    target: str = DEFAULT_TARGET
    token: str = field(default="", repr=False)
    tls: TlsConfig | None = None
    default_timeout_s: float = DEFAULT_TIMEOUT_S
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    allow_insecure: bool = False

    def __post_init__(self) -> None:
        if not self.target:
            raise ConfigError("the forwarder target is empty")
        if self.default_timeout_s <= 0:
            raise ConfigError("default_timeout_s must be positive")
        if any(c in self.token for c in "\r\n"):
            raise ConfigError("the token contains a line break")
        if (
            self.token
            and self.tls is None
            and not self.allow_insecure
            and not is_loopback_target(self.target)
        ):
            raise ConfigError(
                f"refusing to send the bearer token in plaintext to {self.target}: configure "
                f"TLS ({ENV_CA} or {ENV_TLS}=1), or set {ENV_INSECURE}=1 if a sidecar encrypts "
                "the connection"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientConfig:
        """The configuration described by the ``ELIDO_FORWARDER_*`` environment variables."""
        env = os.environ if env is None else env
        token = env.get(ENV_TOKEN, "")
        token_file = env.get(ENV_TOKEN_FILE, "")
        if token and token_file:
            raise ConfigError(f"set only one of {ENV_TOKEN} and {ENV_TOKEN_FILE}")
        if token_file:
            token = read_token_file(Path(token_file))
        timeout_text = env.get(ENV_TIMEOUT, "")
        try:
            timeout = float(timeout_text) if timeout_text else DEFAULT_TIMEOUT_S
        except ValueError:
            raise ConfigError(f"{ENV_TIMEOUT} must be a number of seconds") from None
        return cls(
            target=env.get(ENV_TARGET, "") or DEFAULT_TARGET,
            token=token.strip(),
            tls=tls_from(
                ca=env.get(ENV_CA) or None,
                cert=env.get(ENV_CERT) or None,
                key=env.get(ENV_KEY) or None,
                system_roots=env.get(ENV_TLS, "").lower() in _TRUE,
            ),
            default_timeout_s=timeout,
            allow_insecure=env.get(ENV_INSECURE, "").lower() in _TRUE,
        )


def tls_from(
    *, ca: str | None, cert: str | None, key: str | None, system_roots: bool
) -> TlsConfig | None:
    """A :class:`TlsConfig` if any TLS setting is given, else ``None`` (plaintext)."""
    if not (ca or cert or key or system_roots):
        return None
    return TlsConfig(
        ca_file=Path(ca) if ca else None,
        cert_file=Path(cert) if cert else None,
        key_file=Path(key) if key else None,
    )


def read_token_file(path: Path) -> str:
    """The token stored in ``path``, surrounding whitespace removed."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


def is_loopback_target(target: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8``, ``[::1]`` and Unix-socket targets."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
