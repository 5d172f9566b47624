"""Workspace keys in Vault/OpenBao transit: encrypt, decrypt (cached), rewrap, destroy."""

from server.vault._config import WORKSPACE_ID_PATTERN, VaultConfig
from server.vault._exceptions import KeyDestroyed, VaultDenied, VaultError, VaultUnavailable
from server.vault._keyvault import EncryptedKey, KeyVault, key_version_of

__all__ = [
    "WORKSPACE_ID_PATTERN",
    "EncryptedKey",
    "KeyDestroyed",
    "KeyVault",
    "VaultConfig",
    "VaultDenied",
    "VaultError",
    "VaultUnavailable",
    "key_version_of",
]
