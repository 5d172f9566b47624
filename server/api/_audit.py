"""The audit trail's writer: who did which admin action to which workspace, and how it ended.

Every admin RPC that changes something runs inside :meth:`AuditLog.action`, which records
one entry when the call ends, whatever the outcome (``OK`` or the stable reason the caller
got). The caller is read from the call itself: the bearer token's name and roles (the token
is authenticated again against the live registry; the interceptor already admitted it) and
the mTLS client certificate's identity.

An entry never holds a key or an identifier: registrations record the key's fingerprint,
erasures a keyed hash (HMAC-SHA256) of each identifier — and only when
``FORWARDER_AUDIT_HMAC_KEY`` is set, so that the hash cannot be recomputed from the store
alone (an unkeyed hash of an email address is reversed by hashing candidate addresses).

Entries are written after the action, in their own transaction: if that write fails, the
action stands and the log says ``audit entry not recorded`` with the entry's fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final

import grpc
import structlog

from elido_common.syntax import WORKSPACE_ID
from server._auth import TokenRegistry
from server._errors import ApiError, Reason
from server.store import Store, StoreError
from server.store._records import AuditEntry, ErasureTargets
from server.store._rules import ascii_lower
from server.vault import VaultDenied, VaultUnavailable

_log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

REGISTER: Final = "register"
REMOVE: Final = "remove"
REWRAP: Final = "rewrap"
REPLAY: Final = "replay"
ERASE: Final = "erase"
KEY_RECHECK: Final = "key_recheck"
ACTIONS: Final = (REGISTER, REMOVE, REWRAP, REPLAY, ERASE, KEY_RECHECK)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return exc.reason.value
    if isinstance(exc, VaultUnavailable):
        return Reason.VAULT_UNAVAILABLE.value
    if isinstance(exc, VaultDenied):
        return Reason.VAULT_DENIED.value
    if isinstance(exc, StoreError):
        return Reason.STORE_UNAVAILABLE.value
    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    return Reason.INTERNAL.value


def _first(auth: Mapping[str, Iterable[bytes]], key: str) -> str:
    for value in auth.get(key) or ():
        return value.decode("utf-8", "replace")
    return ""


class AuditLog:
    """Records admin actions in the store's audit trail."""

    def __init__(
        self, store: Store, tokens: TokenRegistry | None, hmac_key: str | None = None
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._key = hmac_key.encode() if hmac_key else None

    def caller(self, context: Context) -> tuple[str, str, str]:
        """(token name, comma-separated roles, mTLS client identity) of the call."""
        name = roles = ""
        if self._tokens is not None:
            metadata = dict(context.invocation_metadata() or ())
            principal = self._tokens.authenticate(str(metadata.get("authorization", "")))
            if principal is not None:
                name, roles = principal.name, ",".join(sorted(r.value for r in principal.roles))
        auth = context.auth_context() or {}
        identity = _first(auth, "x509_common_name") or _first(auth, "x509_subject_alternative_name")
        return name, roles, identity

    def identifier_hashes(self, targets: ErasureTargets) -> list[str] | None:
        """A keyed hash of each (normalised) identifier; None without a configured key.

        The hashed text is ``<kind>:<value>`` with emails ASCII-lower-cased, so the privacy
        officer can recompute one from a request (see docs/operator.md) and find its entry.
        """
        if self._key is None:
            return None
        texts = [
            *(f"email:{ascii_lower(v)}" for v in targets.emails),
            *(f"phone:{v}" for v in targets.phone_numbers),
            *(f"external_id:{v}" for v in targets.external_ids),
            *(f"kx:{v}" for v in targets.kxs),
        ]
        return [
            "hmac-sha256:" + hmac.new(self._key, t.encode(), hashlib.sha256).hexdigest()
            for t in texts
        ]

    async def record(
        self,
        context: Context,
        action: str,
        workspace_id: str,
        details: Mapping[str, Any],
        outcome: str = "OK",
    ) -> None:
        """Append one entry; never raises (a failed write is logged)."""
        name, roles, identity = self.caller(context)
        if workspace_id and WORKSPACE_ID.fullmatch(workspace_id) is None:
            workspace_id = ""  # an invalid id is the caller's text, not a workspace
        entry = AuditEntry(
            occurred_at=time.time(),
            action=action,
            workspace_id=workspace_id,
            actor=name,
            roles=roles,
            client_identity=identity,
            details=json.dumps(dict(details), sort_keys=True, default=str),
            outcome=outcome,
        )
        try:
            await self._store.record_audit(entry)
        except Exception as exc:
            _log.error(
                "audit entry not recorded",
                action=action,
                workspace_id=workspace_id,
                actor=name,
                client_identity=identity,
                outcome=outcome,
                details=entry.details,
                error=type(exc).__name__,
            )

    @contextlib.asynccontextmanager
    async def action(
        self, context: Context, action: str, workspace_id: str
    ) -> AsyncIterator[dict[str, Any]]:
        """Run an admin action and record it when it ends; the caller fills the yielded
        dict with what changed (never a key or an identifier)."""
        details: dict[str, Any] = {}
        outcome = "OK"
        try:
            yield details
        except BaseException as exc:
            outcome = _outcome(exc)
            raise
        finally:
            await self.record(context, action, workspace_id, details, outcome)
