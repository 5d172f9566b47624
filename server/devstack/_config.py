"""Settings for ``python -m server.devstack``."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def _default_forwarder_argv() -> tuple[str, ...]:
    return (sys.executable, "-m", "server")


@dataclass(frozen=True, slots=True)
class DevstackConfig:
    """Where the development data lives and what to start."""

    data_dir: Path = Path("var")
    vault_host: str = "127.0.0.1"
    vault_port: int = 8200
    listen: str = "127.0.0.1:50051"
    # Start only OpenBao (and the token files); run the forwarder yourself.
    vault_only: bool = False
    forwarder_argv: tuple[str, ...] = field(default_factory=_default_forwarder_argv)
    # How long the forwarder may take to drain after SIGTERM before it is killed.
    forwarder_grace_s: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, vault_only: bool = False) -> DevstackConfig:
        """``FORWARDER_DATA_DIR`` (./var), ``DEVSTACK_VAULT_PORT`` (8200), ``DEVSTACK_LISTEN``."""
        raw_port = env.get("DEVSTACK_VAULT_PORT", "8200")
        try:
            port = int(raw_port)
        except ValueError:
            raise ValueError(
                f"DEVSTACK_VAULT_PORT must be a port number, got {raw_port!r}"
            ) from None
        if not 0 < port < 65536:
            raise ValueError(f"DEVSTACK_VAULT_PORT must be a port number, got {raw_port!r}")
        return cls(
            data_dir=Path(env.get("FORWARDER_DATA_DIR") or "var"),
            vault_port=port,
            listen=env.get("DEVSTACK_LISTEN") or "127.0.0.1:50051",
            vault_only=vault_only,
        )
