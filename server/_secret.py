"""A Klaviyo private API key held in memory.

The raw key must never reach disk, logs, metrics, exception text or a response. Wrapping it
in a type whose ``repr``/``str`` show only the fingerprint makes the accidental paths
(f-strings, structlog's event dicts, tracebacks with locals) safe by construction; the one
deliberate path is :meth:`PrivateKey.reveal`, called only where the key is put into an
encryption request or an ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, NoReturn

# `pk_` and alphanumerics: Klaviyo's keys are 37 characters by convention, but the length is
# undocumented, so accept a plausible range rather than the one observed value.
PRIVATE_KEY_PATTERN: Final = re.compile(r"pk_[A-Za-z0-9]{16,128}")
_ACCOUNT_LABEL: Final = b"elido-forwarder/account/v1\0"


class PrivateKey:
    """A Klaviyo private API key; prints as its fingerprint."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @property
    def fingerprint(self) -> str:
        """Identifies the key without revealing it: ``pk_…`` and its last four characters."""
        return fingerprint(self._value)

    @property
    def account(self) -> str:
        """Which Klaviyo account the key speaks for, as far as the forwarder can tell.

        Klaviyo limits requests per account, and write-only scopes cannot name the account,
        so workspaces registered with the same key are taken to share one. This is a SHA-256
        digest of the key under a fixed label: it groups workspaces across replicas without
        storing the key (a key has over 90 bits of randomness, so the digest cannot be
        reversed by guessing, the same argument as for bearer tokens).
        """
        return hashlib.sha256(_ACCOUNT_LABEL + self._value.encode()).hexdigest()[:32]

    def reveal(self) -> str:
        """The raw key. Call only to build a Vault request or an Authorization header."""
        return self._value

    def __repr__(self) -> str:
        return f"PrivateKey({self.fingerprint})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivateKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> NoReturn:
        # Pickling would be a path to disk (multiprocessing, caches); refuse it outright.
        raise TypeError("PrivateKey cannot be pickled")


def fingerprint(raw_key: str) -> str:
    """``pk_…3f9a`` for a key ending in ``3f9a``; four characters reveal nothing usable."""
    return f"{raw_key[:3]}…{raw_key[-4:]}" if len(raw_key) >= 8 else "…"


def is_valid_private_key(raw_key: str) -> bool:
    """True if ``raw_key`` has the form of a Klaviyo private key."""
    return PRIVATE_KEY_PATTERN.fullmatch(raw_key) is not None
