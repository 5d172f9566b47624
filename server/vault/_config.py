"""Settings for :class:`server.vault.KeyVault`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

# Transit key names end up in URL paths and policy globs; the workspace id alphabet keeps them
# a single, unambiguous path segment.
WORKSPACE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, slots=True)
class VaultConfig:
    """Where Vault is, how to log in, and how the forwarder uses transit.

    Authenticate with ``token``, or with AppRole (``role_id`` + ``secret_id``); when both are
    given the token is used first and AppRole takes over once it cannot be renewed.
    """

    addr: str
    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    approle_mount: str = "approle"
    transit_mount: str = "transit"
    key_prefix: str = "elido-ws-"
    namespace: str | None = None
    ca_cert: str | None = None
    # Upper bound on one Vault call, including waiting for a worker thread.
    timeout_s: float = 5.0
    # How long a decrypted key may be served from memory without asking Vault again.
    cache_ttl_s: float = 300.0
    cache_max_entries: int = 10_000
    # Background login retries back off up to this interval while Vault is unreachable.
    retry_max_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if not self.addr:
            raise ValueError("VaultConfig.addr is required (VAULT_ADDR)")
        if not self.token and not (self.role_id and self.secret_id):
            raise ValueError(
                "Vault credentials missing: set VAULT_TOKEN, or VAULT_ROLE_ID and VAULT_SECRET_ID"
            )
        if bool(self.role_id) != bool(self.secret_id):
            raise ValueError("VAULT_ROLE_ID and VAULT_SECRET_ID must be set together")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.cache_ttl_s < 0:
            raise ValueError("cache_ttl_s must not be negative")
        if self.cache_max_entries < 0:
            raise ValueError("cache_max_entries must not be negative")

    @property
    def uses_approle(self) -> bool:
        return bool(self.role_id and self.secret_id)

    def key_name(self, workspace_id: str) -> str:
        """The transit key of ``workspace_id``; raises ValueError for an invalid id."""
        if WORKSPACE_ID_PATTERN.fullmatch(workspace_id) is None:
            raise ValueError("workspace id must match [A-Za-z0-9_.-]{1,64}")
        return f"{self.key_prefix}{workspace_id}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VaultConfig:
        """Read the standard ``VAULT_*`` variables plus the forwarder's own knobs.

        ``VAULT_ADDR``, ``VAULT_TOKEN``, ``VAULT_ROLE_ID``, ``VAULT_SECRET_ID``,
        ``VAULT_APPROLE_MOUNT``, ``VAULT_NAMESPACE``, ``VAULT_CACERT``, ``VAULT_TRANSIT_MOUNT``,
        ``FORWARDER_VAULT_KEY_PREFIX``, ``FORWARDER_VAULT_TIMEOUT_S``,
        ``FORWARDER_KEY_CACHE_TTL_S``, ``FORWARDER_KEY_CACHE_MAX_ENTRIES``.
        """

        def text(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def number(name: str, default: float) -> float:
            raw = text(name)
            if raw is None:
                return default
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {raw!r}") from None

        def integer(name: str, default: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"{name} must be an integer, got {raw!r}") from None

        addr = text("VAULT_ADDR")
        if addr is None:
            raise ValueError("VAULT_ADDR is not set")
        return cls(
            addr=addr,
            token=text("VAULT_TOKEN"),
            role_id=text("VAULT_ROLE_ID"),
            secret_id=text("VAULT_SECRET_ID"),
            approle_mount=text("VAULT_APPROLE_MOUNT") or "approle",
            transit_mount=text("VAULT_TRANSIT_MOUNT") or "transit",
            key_prefix=env.get("FORWARDER_VAULT_KEY_PREFIX", "elido-ws-"),
            namespace=text("VAULT_NAMESPACE"),
            ca_cert=text("VAULT_CACERT"),
            timeout_s=number("FORWARDER_VAULT_TIMEOUT_S", 5.0),
            cache_ttl_s=number("FORWARDER_KEY_CACHE_TTL_S", 300.0),
            cache_max_entries=integer("FORWARDER_KEY_CACHE_MAX_ENTRIES", 10_000),
        )
