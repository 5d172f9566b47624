"""Per-workspace encryption of Klaviyo keys with Vault/OpenBao transit."""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import re
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import hvac
import hvac.exceptions
import requests
import structlog

from server._secret import PrivateKey, is_valid_private_key
from server.vault._cache import DecryptedKeyCache
from server.vault._config import VaultConfig
from server.vault._exceptions import KeyDestroyed, VaultDenied, VaultError, VaultUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")

KEY_TYPE: Final = "aes256-gcm96"
_CIPHERTEXT_VERSION: Final = re.compile(r"vault:v([0-9]+):")
# hvac is synchronous; these threads carry its calls. A handful suffices: calls are short, and
# when Vault hangs, callers time out rather than queue forever.
_WORKER_THREADS: Final = 8
_MAX_ERROR_TEXT: Final = 300
# Renew once this share of the current TTL has passed.
_RENEW_AT_SHARE: Final = 2 / 3
_IDLE_RECHECK_S: Final = 300.0
# `check` probes decrypt permission with this (valid, made-up) workspace id and a ciphertext
# that cannot be one.
CHECK_WORKSPACE_ID: Final = "elido-forwarder-check"
_PROBE_CIPHERTEXT: Final = "vault:v1:" + base64.b64encode(b"not a ciphertext").decode()


@dataclass(frozen=True, slots=True)
class EncryptedKey:
    """A Klaviyo key as transit ciphertext (``vault:vN:...``) and the key version ``N``."""

    ciphertext: str
    key_version: int


def key_version_of(ciphertext: str) -> int:
    """The transit key version a ciphertext was made with; ValueError if it is not one."""
    match = _CIPHERTEXT_VERSION.match(ciphertext)
    if match is None:
        raise ValueError("not a transit ciphertext")
    return int(match.group(1))


@dataclass(slots=True)
class _TokenState:
    """What we know about the token in use; only touched from the event loop."""

    present: bool = False
    generation: int = 0
    ttl_s: float = 0.0  # 0: never expires
    login_ttl_s: float = 0.0
    renewable: bool = False
    refreshed_at: float = 0.0


class KeyVault:
    """Encrypts, decrypts, rewraps and destroys workspace keys in transit; fails closed.

    Every Vault call runs in a worker thread bounded by ``config.timeout_s``. Decrypted keys
    are cached per (workspace, ciphertext) for ``config.cache_ttl_s``. :meth:`start` never
    fails because Vault is down: it logs and keeps trying in the background, and calls made
    meanwhile raise :class:`VaultUnavailable`.
    """

    def __init__(self, config: VaultConfig) -> None:
        self._config = config
        self._cache = DecryptedKeyCache(
            ttl_s=config.cache_ttl_s, max_entries=config.cache_max_entries
        )
        self._client = hvac.Client(
            url=config.addr,
            # "" rather than None: hvac would otherwise read VAULT_TOKEN or ~/.vault-token.
            token=config.token or "",
            namespace=config.namespace,
            verify=config.ca_cert or True,
            timeout=config.timeout_s,
        )
        self._executor: ThreadPoolExecutor | None = None
        self._token = _TokenState(present=bool(config.token), refreshed_at=time.monotonic())
        self._auth_lock = asyncio.Lock()
        self._maintainer: asyncio.Task[None] | None = None
        self._closed = False
        self._secrets: tuple[str, ...] = tuple(s for s in (config.token, config.secret_id) if s)

    def __repr__(self) -> str:
        return f"KeyVault(addr={self._config.addr!r}, cache={self._cache!r})"

    @property
    def config(self) -> VaultConfig:
        return self._config

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in if possible and start keeping the token alive; never raises for an outage."""
        if self._maintainer is not None:
            return
        self._closed = False
        self._executor = ThreadPoolExecutor(
            max_workers=_WORKER_THREADS, thread_name_prefix="keyvault"
        )
        try:
            await self._authenticate()
        except VaultError as exc:
            log.warning("vault.start_degraded", error=str(exc), error_type=type(exc).__name__)
        self._maintainer = asyncio.create_task(self._maintain_token(), name="keyvault-token")

    async def close(self) -> None:
        self._closed = True
        task, self._maintainer = self._maintainer, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if not task.cancelled():
                    raise
        self._cache.clear()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._client.adapter.close()

    # -- the API ----------------------------------------------------------------------------

    async def encrypt(self, workspace_id: str, key: PrivateKey) -> EncryptedKey:
        """Encrypt ``key`` with the workspace's transit key, creating that key on first use."""
        name = self._config.key_name(workspace_id)
        if not is_valid_private_key(key.reveal()):
            raise ValueError("not a Klaviyo private key")
        plaintext = base64.b64encode(key.reveal().encode("utf-8")).decode("ascii")
        resp = await self._call(
            "encrypt",
            workspace_id,
            lambda: self._client.secrets.transit.encrypt_data(
                name,
                plaintext=plaintext,
                type=KEY_TYPE,
                mount_point=self._config.transit_mount,
            ),
            secrets=(key.reveal(), plaintext),
        )
        ciphertext = _field(resp, "ciphertext", str, "encrypt", workspace_id)
        encrypted = self._encrypted(ciphertext, "encrypt", workspace_id)
        log.info("vault.encrypted", workspace_id=workspace_id, key_version=encrypted.key_version)
        return encrypted

    async def decrypt(self, workspace_id: str, ciphertext: str) -> PrivateKey:
        """The key behind ``ciphertext``, from the cache or from Vault."""
        name = self._config.key_name(workspace_id)
        cached = self._cache.get(workspace_id, ciphertext)
        if cached is not None:
            return cached
        resp = await self._call(
            "decrypt",
            workspace_id,
            lambda: self._client.secrets.transit.decrypt_data(
                name, ciphertext=ciphertext, mount_point=self._config.transit_mount
            ),
        )
        encoded = _field(resp, "plaintext", str, "decrypt", workspace_id)
        key = _decode_key(encoded, workspace_id)
        self._cache.put(workspace_id, ciphertext, key)
        return key

    async def rewrap(self, workspace_id: str, ciphertext: str) -> EncryptedKey:
        """Re-encrypt ``ciphertext`` under the newest version of the workspace's key."""
        name = self._config.key_name(workspace_id)
        resp = await self._call(
            "rewrap",
            workspace_id,
            lambda: self._client.secrets.transit.rewrap_data(
                name, ciphertext=ciphertext, mount_point=self._config.transit_mount
            ),
        )
        new_ciphertext = _field(resp, "ciphertext", str, "rewrap", workspace_id)
        encrypted = self._encrypted(new_ciphertext, "rewrap", workspace_id)
        log.info("vault.rewrapped", workspace_id=workspace_id, key_version=encrypted.key_version)
        return encrypted

    async def latest_version(self, workspace_id: str) -> int:
        """The newest version of the workspace's transit key; KeyDestroyed if there is none."""
        name = self._config.key_name(workspace_id)
        resp = await self._call(
            "read_key",
            workspace_id,
            lambda: self._client.secrets.transit.read_key(
                name, mount_point=self._config.transit_mount
            ),
        )
        return _field(resp, "latest_version", int, "read_key", workspace_id)

    async def destroy(self, workspace_id: str) -> None:
        """Crypto-shred: delete the workspace's transit key. Idempotent."""
        name = self._config.key_name(workspace_id)
        # Before talking to Vault: even if the deletion fails, this process stops using the key.
        self._cache.forget(workspace_id)
        try:
            await self._call(
                "destroy",
                workspace_id,
                lambda: self._client.secrets.transit.update_key_configuration(
                    name, deletion_allowed=True, mount_point=self._config.transit_mount
                ),
            )
            await self._call(
                "destroy",
                workspace_id,
                lambda: self._client.secrets.transit.delete_key(
                    name, mount_point=self._config.transit_mount
                ),
            )
        except KeyDestroyed:
            log.info("vault.destroy_absent", workspace_id=workspace_id)
            return
        self._cache.forget(workspace_id)
        log.info("vault.destroyed", workspace_id=workspace_id)

    def forget(self, workspace_id: str) -> None:
        """Evict the cached plaintexts of ``workspace_id``."""
        self._cache.forget(workspace_id)

    async def healthy(self) -> bool:
        """True if Vault answers and accepts our token."""
        try:
            await self._call("health", None, self._client.auth.token.lookup_self)
        except VaultError:
            return False
        return True

    async def check(self) -> list[str]:
        """Problems that would stop the forwarder using Vault; empty if none. For ``check``.

        Logs in (or looks up the static token), then asks Vault to decrypt a malformed
        ciphertext with a probe key name under the prefix: a token allowed to decrypt gets
        "400 invalid request" (no such key, or not a ciphertext), one that is not gets 403.
        Nothing is created, changed or decrypted.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keyvault")
        try:
            await self._authenticate()
        except VaultError as exc:
            return [f"VAULT_ADDR: cannot log in to {self._config.addr}: {exc}"]
        name = self._config.key_name(CHECK_WORKSPACE_ID)
        try:
            await self._run(
                "decrypt",
                None,
                lambda: self._client.secrets.transit.decrypt_data(
                    name, ciphertext=_PROBE_CIPHERTEXT, mount_point=self._config.transit_mount
                ),
                (),
            )
        except KeyDestroyed:
            pass  # allowed: Vault looked for the key or the ciphertext, which we made up
        except VaultDenied as exc:
            return [
                f"VAULT_TRANSIT_MOUNT, FORWARDER_VAULT_KEY_PREFIX: this Vault identity may not"
                f" decrypt with {self._config.transit_mount}/decrypt/{name}"
                f" (check the policy, docs/vault-policy.hcl): {exc}"
            ]
        except VaultError as exc:
            return [f"VAULT_ADDR: transit decrypt check failed: {exc}"]
        return []

    # -- calls ------------------------------------------------------------------------------

    async def _call(
        self,
        op: str,
        workspace_id: str | None,
        fn: Callable[[], T],
        *,
        secrets: Iterable[str] = (),
    ) -> T:
        """Run ``fn`` with a valid token; one fresh login (AppRole, JWT) and retry after a 403."""
        secrets = tuple(secrets)
        await self._ensure_token()
        generation = self._token.generation
        try:
            return await self._run(op, workspace_id, fn, secrets)
        except VaultDenied:
            if self._config.login_method is None:
                if not await self._reread_token_file(generation):
                    raise
                return await self._run(op, workspace_id, fn, secrets)
            log.warning("vault.denied_relogin", op=op, workspace_id=workspace_id)
        await self._relogin(generation)
        return await self._run(op, workspace_id, fn, secrets)

    async def _run(
        self,
        op: str,
        workspace_id: str | None,
        fn: Callable[[], T],
        secrets: tuple[str, ...],
    ) -> T:
        if self._closed or self._executor is None:
            raise VaultUnavailable("KeyVault is not started", workspace_id=workspace_id)
        loop = asyncio.get_running_loop()
        failure: VaultError | None = None
        try:
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, fn), self._config.timeout_s
            )
        except Exception as exc:  # every failure is translated: fail closed
            failure = self._translate(exc, op, workspace_id, secrets)
        # Raised outside the except block so the hvac/requests exception (whose text can carry
        # the request) is neither chained nor kept as __context__.
        log.warning(
            "vault.call_failed",
            op=op,
            workspace_id=workspace_id,
            error_type=type(failure).__name__,
            error=str(failure),
        )
        raise failure

    def _translate(
        self,
        exc: Exception,
        op: str,
        workspace_id: str | None,
        secrets: tuple[str, ...],
    ) -> VaultError:
        where = f"Vault {op}" + (f" for workspace {workspace_id}" if workspace_id else "")
        if isinstance(exc, TimeoutError | requests.Timeout):
            return VaultUnavailable(
                f"{where}: no answer within {self._config.timeout_s:g}s",
                workspace_id=workspace_id,
            )
        if isinstance(exc, requests.RequestException):
            return VaultUnavailable(
                f"{where}: cannot reach {self._config.addr} ({type(exc).__name__})",
                workspace_id=workspace_id,
            )
        if not isinstance(exc, hvac.exceptions.VaultError):
            return VaultError(
                f"{where}: unexpected {type(exc).__name__}", workspace_id=workspace_id
            )
        detail = self._scrub("; ".join(exc.errors or []) or type(exc).__name__, secrets)
        message = f"{where}: {detail}"
        if isinstance(exc, hvac.exceptions.Forbidden | hvac.exceptions.Unauthorized):
            return VaultDenied(message, workspace_id=workspace_id)
        if op.endswith("_login") and isinstance(exc, hvac.exceptions.InvalidRequest):
            # A refused login (bad secret id, a JWT expired, for another audience or signed
            # by an unknown key): retrying the same credentials will not help.
            return VaultDenied(message, workspace_id=workspace_id)
        if isinstance(
            exc,
            hvac.exceptions.VaultDown
            | hvac.exceptions.InternalServerError
            | hvac.exceptions.BadGateway
            | hvac.exceptions.RateLimitExceeded
            | hvac.exceptions.VaultNotInitialized,
        ):
            return VaultUnavailable(message, workspace_id=workspace_id)
        if isinstance(exc, hvac.exceptions.InvalidPath) and op == "read_key":
            return KeyDestroyed(f"{where}: no such transit key", workspace_id=workspace_id)
        if isinstance(exc, hvac.exceptions.InvalidRequest):
            if op in ("decrypt", "rewrap"):
                # "encryption key not found", "invalid ciphertext", "ciphertext version is
                # disallowed": this ciphertext will never decrypt again.
                return KeyDestroyed(message, workspace_id=workspace_id)
            if op == "destroy" and ("not found" in detail or "no existing key" in detail):
                return KeyDestroyed(message, workspace_id=workspace_id)
        return VaultError(message, workspace_id=workspace_id)

    def _scrub(self, text: str, secrets: tuple[str, ...]) -> str:
        for secret in (*secrets, *self._secrets, self._client.token or ""):
            if secret:
                text = text.replace(secret, "[redacted]")
        # Vault's multi-error text ("1 error occurred:\n\t* ...") becomes one log-friendly line.
        return " ".join(text.split())[:_MAX_ERROR_TEXT]

    def _encrypted(self, ciphertext: str, op: str, workspace_id: str) -> EncryptedKey:
        try:
            version = key_version_of(ciphertext)
        except ValueError:
            raise VaultError(
                f"Vault {op} for workspace {workspace_id}: answer is not a transit ciphertext",
                workspace_id=workspace_id,
            ) from None
        return EncryptedKey(ciphertext=ciphertext, key_version=version)

    # -- authentication ---------------------------------------------------------------------

    async def _ensure_token(self) -> None:
        if self._token.present:
            return
        async with self._auth_lock:
            if not self._token.present:
                await self._authenticate()

    async def _relogin(self, seen_generation: int) -> None:
        async with self._auth_lock:
            # Another caller already replaced the token that was refused.
            if self._token.generation != seen_generation:
                return
            await self._login()

    async def _reread_token_file(self, seen_generation: int) -> bool:
        """After a refusal: take the token file's current token if it changed (a Vault Agent
        sink rotates it). True if a different token is now in use."""
        path = self._config.token_file
        if path is None:
            return False
        async with self._auth_lock:
            if self._token.generation != seen_generation:
                return True  # another caller already took the new token
            try:
                token = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                log.warning(
                    "vault.token_file_unreadable", path=str(path), error_type=type(exc).__name__
                )
                return False
            if not token or token == self._client.token:
                return False
            self._client.token = token
            self._secrets = (*self._secrets, token)
            log.info("vault.token_file_changed", path=str(path))
            await self._lookup_static_token()
            return True

    async def _authenticate(self) -> None:
        """Set up the token state: log in (AppRole, JWT), or look up the static token's TTL."""
        if self._config.token and self._token.generation == 0:
            try:
                await self._lookup_static_token()
                return
            except VaultDenied:
                if self._config.login_method is None:
                    raise
        if self._config.login_method is not None:
            await self._login()

    async def _lookup_static_token(self) -> None:
        resp = await self._run("lookup_self", None, self._client.auth.token.lookup_self, ())
        data = resp.get("data") or {}
        ttl = float(data.get("ttl") or 0)
        self._set_token(ttl=ttl, renewable=bool(data.get("renewable")))
        log.info("vault.token_ready", ttl_s=ttl, renewable=self._token.renewable)

    async def _login(self) -> None:
        if self._config.login_method == "jwt":
            await self._jwt_login()
        else:
            await self._approle_login()

    async def _jwt_login(self) -> None:
        """Log in with the JWT auth method; the JWT file is read anew at every login, since
        projected service-account tokens and workload identity tokens rotate."""
        assert self._config.jwt_role is not None
        assert self._config.jwt_file is not None
        role, path = self._config.jwt_role, self._config.jwt_file
        try:
            jwt = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise VaultDenied(
                f"Vault JWT login: cannot read VAULT_JWT_FILE {path}: {reason}"
            ) from None
        if not jwt:
            raise VaultDenied(f"Vault JWT login: VAULT_JWT_FILE {path} is empty")
        resp = await self._run(
            "jwt_login",
            None,
            lambda: self._client.auth.jwt.jwt_login(
                role, jwt, use_token=False, path=self._config.jwt_mount
            ),
            (jwt,),
        )
        self._take_login(resp, "JWT")

    def _read_secret_id_file(self, path: Path) -> str | None:
        """The file's secret id (rotated by the orchestrator); None keeps the one from start."""
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            log.warning(
                "vault.secret_id_file_unreadable", path=str(path), error_type=type(exc).__name__
            )
            return None
        if value and value not in self._secrets:
            self._secrets = (*self._secrets, value)
        return value or None

    def _take_login(self, resp: Any, method: str) -> None:
        auth = resp.get("auth") if isinstance(resp, dict) else None
        token = auth.get("client_token") if isinstance(auth, dict) else None
        if not isinstance(auth, dict) or not isinstance(token, str) or not token:
            raise VaultError(f"Vault {method} login: answer has no token")
        self._client.token = token
        ttl = float(auth.get("lease_duration") or 0)
        self._set_token(ttl=ttl, renewable=bool(auth.get("renewable")))
        log.info(f"vault.{method.lower()}_login", ttl_s=ttl, generation=self._token.generation)

    async def _approle_login(self) -> None:
        assert self._config.role_id is not None
        assert self._config.secret_id is not None
        role_id, secret_id = self._config.role_id, self._config.secret_id
        if self._config.secret_id_file is not None:
            secret_id = self._read_secret_id_file(self._config.secret_id_file) or secret_id
        resp = await self._run(
            "approle_login",
            None,
            lambda: self._client.auth.approle.login(
                role_id,
                secret_id=secret_id,
                use_token=False,
                mount_point=self._config.approle_mount,
            ),
            (secret_id,),
        )
        self._take_login(resp, "AppRole")

    def _set_token(self, *, ttl: float, renewable: bool) -> None:
        state = self._token
        state.present = True
        state.generation += 1
        state.ttl_s = ttl
        state.login_ttl_s = ttl
        state.renewable = renewable
        state.refreshed_at = time.monotonic()

    async def _renew(self) -> bool:
        """Renew the token; True if Vault capped the renewal at the token's max TTL."""
        resp = await self._run("renew_self", None, lambda: self._client.auth.token.renew_self(), ())
        auth = resp.get("auth") or {}
        ttl = float(auth.get("lease_duration") or 0)
        state = self._token
        state.ttl_s = ttl
        state.renewable = bool(auth.get("renewable"))
        state.refreshed_at = time.monotonic()
        warnings = resp.get("warnings") or []
        capped = ttl < state.login_ttl_s or any("max_ttl" in str(w) for w in warnings)
        log.info("vault.token_renewed", ttl_s=ttl, capped=capped)
        return capped

    def _renewal_delay(self) -> float | None:
        """Seconds until the token should be renewed or replaced; None if it never expires."""
        state = self._token
        if state.ttl_s <= 0:
            return None
        elapsed = time.monotonic() - state.refreshed_at
        return max(0.0, state.ttl_s * _RENEW_AT_SHARE - elapsed)

    async def _refresh(self) -> None:
        """Renew the token, or log in again when renewing cannot keep it alive."""
        state = self._token
        can_relogin = self._config.login_method is not None
        if can_relogin and not state.renewable:
            await self._locked_login()
            return
        if not state.renewable:
            log.warning("vault.token_not_renewable", ttl_s=state.ttl_s)
            state.ttl_s = 0  # nothing more we can do; calls will report VaultDenied
            return
        try:
            capped = await self._renew()
        except VaultError:
            if not can_relogin:
                if await self._reread_token_file(state.generation):
                    return
                raise
            # Refused, expired or "past the max TTL" (which OpenBao reports as a 500): a fresh
            # login either works or fails with the real reason (e.g. Vault unreachable).
            await self._locked_login()
            return
        if capped and can_relogin:
            # The token is nearing its max TTL: replace it while it still works.
            await self._locked_login()

    async def _locked_login(self) -> None:
        async with self._auth_lock:
            await self._login()

    async def _maintain_token(self) -> None:
        backoff = 0.5
        while not self._closed:
            try:
                if not self._token.present:
                    async with self._auth_lock:
                        if not self._token.present:
                            await self._authenticate()
                elif self._token.generation == 0:
                    # Static token whose lookup failed at start: learn its TTL now.
                    await self._authenticate()
                delay = self._renewal_delay()
                await asyncio.sleep(_IDLE_RECHECK_S if delay is None else delay)
                if self._renewal_delay() is not None:
                    await self._refresh()
                backoff = 0.5
            except Exception as exc:  # the task must outlive any failure, fail closed
                # No exc_info: tracebacks rendered with locals could expose credentials.
                log.warning(
                    "vault.token_maintenance_failed",
                    error=str(exc) if isinstance(exc, VaultError) else "",
                    error_type=type(exc).__name__,
                    retry_in_s=round(backoff, 2),
                )
                # Jitter spreads replicas' retries after a shared outage.
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 -- jitter
                backoff = min(backoff * 2, self._config.retry_max_interval_s)


def _field(resp: Any, name: str, kind: type[T], op: str, workspace_id: str) -> T:
    data = resp.get("data") if isinstance(resp, dict) else None
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise VaultError(
            f"Vault {op} for workspace {workspace_id}: answer lacks {name}",
            workspace_id=workspace_id,
        )
    return value


def _decode_key(encoded: str, workspace_id: str) -> PrivateKey:
    try:
        raw = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raw = ""
    if not is_valid_private_key(raw):
        # Fail closed: never hand out a plaintext that does not even look like a key.
        raise VaultError(
            f"Vault decrypt for workspace {workspace_id}: plaintext is not a Klaviyo key",
            workspace_id=workspace_id,
        )
    return PrivateKey(raw)
