"""Errors raised by :class:`server.vault.KeyVault`.

The tree::

    VaultError                 anything that went wrong talking to Vault; fail closed
    ├── VaultUnavailable       connection refused, timeout, sealed, 5xx, not yet logged in:
    │                          transient; answer UNAVAILABLE with RetryInfo / pause delivery
    ├── VaultDenied            403 / permission denied: our token or policy is wrong; an
    │                          operator must act, retrying will not help
    └── KeyDestroyed           the workspace's transit key does not exist any more, or this
                               ciphertext can never be decrypted with it

No message, attribute or ``repr`` of these exceptions carries a raw key or its base64 form:
they are built from the operation, the workspace id and Vault's own error strings after
scrubbing, and never chain the underlying hvac/requests exception (whose text can include the
request).
"""

from __future__ import annotations


class VaultError(Exception):
    """Base class: Vault could not do what was asked; nothing unverified is returned."""

    def __init__(self, message: str, *, workspace_id: str | None = None) -> None:
        super().__init__(message)
        self.workspace_id = workspace_id


class VaultUnavailable(VaultError):
    """Vault is unreachable, too slow, sealed or failing; try again later."""


class VaultDenied(VaultError):
    """Vault refused the request (403): token expired beyond renewal or policy too narrow."""


class KeyDestroyed(VaultError):
    """The workspace's transit key is gone, or this ciphertext cannot be decrypted with it."""
