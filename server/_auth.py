"""Bearer-token authentication and role-based access to the RPCs.

Tokens are stored only as SHA-256 hashes (they are long random strings, so a fast hash is
enough; nothing to brute-force) and compared in constant time. The file is read at start
and again on SIGHUP (:meth:`TokenRegistry.replace`); ``elido-fwd tokens`` writes it. It
looks like::

    {"tokens": [{"name": "dashboard", "role": "admin", "sha256": "<hex>"},
                {"name": "edge-sidecar", "roles": ["ingest"], "sha256": "<hex>"}]}
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SERVICE: Final = "elido.forwarder.v1.ForwarderService"


class Role(enum.StrEnum):
    """What a token may call."""

    ADMIN = "admin"
    INGEST = "ingest"


# Integration, key and replay RPCs change what reaches customers' Klaviyo accounts: admin.
# Intake RPCs only add events: ingest. Anything not listed (health, reflection) is open.
METHOD_ROLES: Final[Mapping[str, Role]] = {
    **{
        f"/{SERVICE}/{name}": Role.ADMIN
        for name in (
            "RegisterIntegration",
            "RemoveIntegration",
            "GetIntegration",
            "ListIntegrations",
            "RewrapKeys",
            "VerifyIntegrationKey",
            "ListFailedEvents",
            "ReplayFailedEvents",
            "ErasePersonalData",
            "ListAuditEvents",
        )
    },
    **{
        f"/{SERVICE}/{name}": Role.INGEST
        for name in ("ForwardClick", "StreamClicks", "ForwardConversion")
    },
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    name: str
    roles: frozenset[Role]


def hash_token(token: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return secrets.token_urlsafe(32)


class TokenRegistry:
    """Maps presented bearer tokens to principals."""

    def __init__(self, entries: Iterable[tuple[str, frozenset[Role], str]]) -> None:
        self._entries = [
            (bytes.fromhex(digest), Principal(name, roles)) for name, roles, digest in entries
        ]

    def __len__(self) -> int:
        return len(self._entries)

    def replace(self, other: TokenRegistry) -> None:
        """Take ``other``'s tokens: later calls see only them, calls already admitted go on.

        One assignment, so a concurrent :meth:`authenticate` sees the old list or the new one.
        """
        self._entries = other._entries

    @classmethod
    def from_file(cls, path: Path) -> TokenRegistry:
        """Load a token file (see the module docstring); raises ``ValueError`` if malformed."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not UTF-8 text") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None
        items = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise ValueError(f'{path}: expected {{"tokens": [...]}}')
        entries = []
        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValueError("not an object")
                raw_roles = item.get("roles") or [item.get("role")]
                roles = frozenset(Role(r) for r in raw_roles)
                digest = str(item["sha256"]).lower()
                if len(bytes.fromhex(digest)) != 32:
                    raise ValueError("sha256 must be 64 hex characters")
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}: tokens[{i}] is malformed: {exc}") from None
            entries.append((str(item.get("name", f"token-{i}")), roles, digest))
        return cls(entries)

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal for an ``authorization`` header value, or None."""
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        presented = hashlib.sha256(authorization[7:].strip().encode()).digest()
        found: Principal | None = None
        # Compare against every entry so timing does not tell how many tokens precede a match.
        for digest, principal in self._entries:
            if hmac.compare_digest(digest, presented):
                found = principal
        return found
