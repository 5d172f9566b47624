"""Vault down, hung, sealed, restarted: KeyVault fails fast and closed, then recovers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from server._secret import PrivateKey
from server.vault import KeyVault, VaultConfig, VaultUnavailable
from tests.support.openbao import FileVaultFixture, new_workspace_id


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections (kernel backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


@pytest.mark.slow
async def test_killed_vault_fails_fast_then_recovers_without_restarting_keyvault(
    openbao_file_server: FileVaultFixture, private_key: PrivateKey
) -> None:
    vault = KeyVault(openbao_file_server.vault_config(timeout_s=2.0, cache_ttl_s=0))
    await vault.start()
    try:
        ws = new_workspace_id()
        encrypted = await vault.encrypt(ws, private_key)

        openbao_file_server.server.kill()
        started = time.monotonic()
        with pytest.raises(VaultUnavailable):
            await vault.decrypt(ws, encrypted.ciphertext)
        with pytest.raises(VaultUnavailable):
            await vault.encrypt(ws, private_key)
        assert time.monotonic() - started < 2.0
        assert not await vault.healthy()

        openbao_file_server.server.start()  # same port, same data, unsealed from init.json
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
        assert await vault.healthy()
    finally:
        await vault.close()


async def test_hung_vault_is_bounded_by_the_timeout(
    silent_port: int, private_key: PrivateKey
) -> None:
    vault = KeyVault(VaultConfig(addr=f"http://127.0.0.1:{silent_port}", token="t", timeout_s=0.5))
    started = time.monotonic()
    await vault.start()  # must not fail or hang: the forwarder starts without Vault
    assert time.monotonic() - started < 1.5
    try:
        started = time.monotonic()
        with pytest.raises(VaultUnavailable, match=r"no answer within 0\.5s"):
            await vault.encrypt(new_workspace_id(), private_key)
        assert time.monotonic() - started < 1.5
    finally:
        await vault.close()


async def test_sealed_vault_is_unavailable(
    openbao_file_server: FileVaultFixture, private_key: PrivateKey
) -> None:
    vault = KeyVault(openbao_file_server.vault_config(cache_ttl_s=0))
    await vault.start()
    try:
        ws = new_workspace_id()
        encrypted = await vault.encrypt(ws, private_key)
        openbao_file_server.root_client().sys.seal()
        with pytest.raises(VaultUnavailable):
            await vault.decrypt(ws, encrypted.ciphertext)
        openbao_file_server.server.unseal()
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
    finally:
        await vault.close()


@pytest.mark.slow
async def test_cache_serves_during_outage_within_ttl_only(
    openbao_file_server: FileVaultFixture, private_key: PrivateKey
) -> None:
    vault = KeyVault(openbao_file_server.vault_config(cache_ttl_s=1.0, timeout_s=1.0))
    await vault.start()
    try:
        ws = new_workspace_id()
        encrypted = await vault.encrypt(ws, private_key)
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key

        openbao_file_server.server.kill()
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key  # from the cache
        await asyncio.sleep(1.1)
        with pytest.raises(VaultUnavailable):
            await vault.decrypt(ws, encrypted.ciphertext)
        # forget() evicts at once, too.
        openbao_file_server.server.start()
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
        vault.forget(ws)
        openbao_file_server.server.kill()
        with pytest.raises(VaultUnavailable):
            await vault.decrypt(ws, encrypted.ciphertext)
    finally:
        await vault.close()


@pytest.mark.slow
async def test_approle_start_while_vault_down_then_recovers(
    openbao_file_server: FileVaultFixture, private_key: PrivateKey
) -> None:
    creds = openbao_file_server.approle_credentials()
    config = VaultConfig(
        addr=openbao_file_server.addr,
        role_id=creds.role_id,
        secret_id=creds.secret_id,
        timeout_s=1.0,
    )
    openbao_file_server.server.kill()
    vault = KeyVault(config)
    await vault.start()  # logs and retries in the background instead of failing
    try:
        with pytest.raises(VaultUnavailable):
            await vault.encrypt(new_workspace_id(), private_key)
        openbao_file_server.server.start()
        ws = new_workspace_id()
        encrypted = await vault.encrypt(ws, private_key)
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
    finally:
        await vault.close()
