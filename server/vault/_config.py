"""Settings for :class:`server.vault.KeyVault`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from server._env import Env

# Transit key names end up in URL paths and policy globs; the workspace id alphabet keeps them
# a single, unambiguous path segment.
WORKSPACE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")

LoginMethod = Literal["approle", "jwt"]


@dataclass(frozen=True, slots=True)
class VaultConfig:
    """Where Vault is, how to log in, and how the forwarder uses transit.

    Authenticate with ``token``; with AppRole (``role_id`` + ``secret_id``); or with the
    JWT/OIDC auth method (``jwt_role`` + ``jwt_file``, a file holding a JWT such as a
    Kubernetes projected service-account token, read again at every login because such
    tokens rotate). When a token and a login method are both given, the token is used first
    and the login method takes over once the token cannot be renewed.
    """

    addr: str
    token: str | None = field(default=None, repr=False)
    # Where ``token`` came from (VAULT_TOKEN_FILE): read again when Vault refuses the token,
    # so a token rotated by a Vault Agent sink is picked up without a restart.
    token_file: Path | None = None
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    # Where ``secret_id`` came from (VAULT_SECRET_ID_FILE): read again at every login, so a
    # secret id rotated by the orchestrator is used without a restart.
    secret_id_file: Path | None = None
    approle_mount: str = "approle"
    jwt_role: str | None = None
    jwt_file: Path | None = None
    jwt_mount: str = "jwt"
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
        if bool(self.role_id) != bool(self.secret_id):
            raise ValueError("VAULT_ROLE_ID and VAULT_SECRET_ID must be set together")
        if bool(self.jwt_role) != bool(self.jwt_file):
            raise ValueError("VAULT_JWT_ROLE and VAULT_JWT_FILE must be set together")
        if self.role_id and self.jwt_role:
            raise ValueError("choose one login method: AppRole (VAULT_ROLE_ID) or JWT")
        if not self.token and self.login_method is None:
            raise ValueError(
                "Vault credentials missing: set VAULT_TOKEN, VAULT_ROLE_ID and VAULT_SECRET_ID,"
                " or VAULT_JWT_ROLE and VAULT_JWT_FILE"
            )
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.cache_ttl_s < 0:
            raise ValueError("cache_ttl_s must not be negative")
        if self.cache_max_entries < 0:
            raise ValueError("cache_max_entries must not be negative")

    @property
    def login_method(self) -> LoginMethod | None:
        """How the forwarder logs in (again) by itself; None for a static token only."""
        if self.role_id and self.secret_id:
            return "approle"
        if self.jwt_role and self.jwt_file:
            return "jwt"
        return None

    @property
    def uses_approle(self) -> bool:
        return self.login_method == "approle"

    def key_name(self, workspace_id: str) -> str:
        """The transit key of ``workspace_id``; raises ValueError for an invalid id."""
        if WORKSPACE_ID_PATTERN.fullmatch(workspace_id) is None:
            raise ValueError("workspace id must match [A-Za-z0-9_.-]{1,64}")
        return f"{self.key_prefix}{workspace_id}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> VaultConfig:
        """:func:`vault_config` over a plain mapping; raises :class:`ConfigError`."""
        reader = Env(env)
        config = vault_config(reader)
        reader.raise_problems()
        assert config is not None
        return config


def vault_config(env: Env) -> VaultConfig | None:
    """The standard ``VAULT_*`` variables plus the forwarder's own knobs.

    Records every problem in ``env`` (and returns None if the result cannot be built).
    ``VAULT_TOKEN`` and ``VAULT_SECRET_ID`` may be given as files (``*_FILE``).
    """
    before = len(env.problems)
    addr = env.text("VAULT_ADDR")
    if not addr:
        env.problem("VAULT_ADDR is required (make run starts a local OpenBao and sets it)")
    elif not addr.startswith(("http://", "https://")):
        env.problem(f"VAULT_ADDR must be an http:// or https:// URL, got {addr!r}")
    token = env.secret("VAULT_TOKEN")
    token_file = env.path("VAULT_TOKEN_FILE") if token and not env.is_set("VAULT_TOKEN") else None
    role_id = env.optional("VAULT_ROLE_ID")
    secret_id = env.secret("VAULT_SECRET_ID")
    secret_id_file = (
        env.path("VAULT_SECRET_ID_FILE")
        if secret_id and not env.is_set("VAULT_SECRET_ID")
        else None
    )
    jwt_role = env.optional("VAULT_JWT_ROLE")
    jwt_file = env.path("VAULT_JWT_FILE")
    if bool(role_id) != bool(secret_id) and not env.is_set("VAULT_SECRET_ID_FILE"):
        env.problem("VAULT_ROLE_ID and VAULT_SECRET_ID (or VAULT_SECRET_ID_FILE) go together")
    if bool(jwt_role) != bool(jwt_file):
        env.problem("VAULT_JWT_ROLE and VAULT_JWT_FILE go together")
    if role_id and jwt_role:
        env.problem("VAULT_ROLE_ID and VAULT_JWT_ROLE are both set; choose one login method")
    if jwt_file is not None and not jwt_file.is_file():
        # Only checked for existence here: its content is read at each login.
        env.problem(f"VAULT_JWT_FILE: {jwt_file} is not a readable file")
    has_credentials = (
        token
        or (role_id and secret_id)
        or (jwt_role and jwt_file)
        or env.is_set("VAULT_TOKEN_FILE")
        or env.is_set("VAULT_SECRET_ID_FILE")
    )
    if not has_credentials:
        env.problem(
            "VAULT_TOKEN is not set, nor VAULT_ROLE_ID + VAULT_SECRET_ID, nor VAULT_JWT_ROLE +"
            " VAULT_JWT_FILE: the forwarder has no way to log in to Vault"
        )
    timeout_s = env.positive("FORWARDER_VAULT_TIMEOUT_S", 5.0)
    cache_ttl_s = env.number("FORWARDER_KEY_CACHE_TTL_S", 300.0, minimum=0)
    cache_max = env.integer("FORWARDER_KEY_CACHE_MAX_ENTRIES", 10_000, minimum=0)
    key_prefix = env.text("FORWARDER_VAULT_KEY_PREFIX", "elido-ws-")
    if not WORKSPACE_ID_PATTERN.fullmatch(key_prefix):
        env.problem(f"FORWARDER_VAULT_KEY_PREFIX must match [A-Za-z0-9_.-]+, got {key_prefix!r}")
    ca_cert = env.optional("VAULT_CACERT")
    if ca_cert is not None and not Path(ca_cert).is_file():
        env.problem(f"VAULT_CACERT: {ca_cert} is not a readable file")
    if len(env.problems) > before:
        return None
    return VaultConfig(
        addr=addr,
        token=token,
        token_file=token_file,
        role_id=role_id,
        secret_id=secret_id,
        secret_id_file=secret_id_file,
        approle_mount=env.text("VAULT_APPROLE_MOUNT", "approle"),
        jwt_role=jwt_role,
        jwt_file=jwt_file,
        jwt_mount=env.text("VAULT_JWT_MOUNT", "jwt"),
        transit_mount=env.text("VAULT_TRANSIT_MOUNT", "transit"),
        key_prefix=key_prefix,
        namespace=env.optional("VAULT_NAMESPACE"),
        ca_cert=ca_cert,
        timeout_s=timeout_s,
        cache_ttl_s=cache_ttl_s,
        cache_max_entries=cache_max,
    )
