from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from server._secret import PrivateKey
from server.vault import KeyVault
from tests.support.openbao import (  # fixtures, re-exported for this folder
    VaultFixture,
    openbao,
    openbao_file_server,
)

__all__ = ["openbao", "openbao_file_server"]


def new_private_key() -> PrivateKey:
    return PrivateKey("pk_" + secrets.token_hex(17))


@pytest.fixture
def private_key() -> PrivateKey:
    return new_private_key()


@pytest.fixture
async def keyvault(openbao: VaultFixture) -> AsyncIterator[KeyVault]:
    vault = KeyVault(openbao.vault_config())
    await vault.start()
    try:
        yield vault
    finally:
        await vault.close()
