"""Token and AppRole authentication, renewal and re-login (short TTLs, real OpenBao)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from server._secret import PrivateKey
from server.vault import KeyVault, VaultConfig, VaultDenied
from tests.support.openbao import POLICY_NAME, VaultFixture, new_workspace_id


def _approle_config(openbao: VaultFixture, **role: str) -> VaultConfig:
    creds = openbao.approle_credentials(role_name=f"r-{new_workspace_id()}", **role)
    return VaultConfig(addr=openbao.addr, role_id=creds.role_id, secret_id=creds.secret_id)


async def test_approle_login_gets_only_the_forwarder_policy(
    openbao: VaultFixture, private_key: PrivateKey
) -> None:
    vault = KeyVault(_approle_config(openbao))
    await vault.start()
    try:
        ws = new_workspace_id()
        encrypted = await vault.encrypt(ws, private_key)
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
        info = openbao.root_client().auth.token.lookup(vault._client.token)["data"]
        assert info["policies"] == [POLICY_NAME]  # no `default` policy either
    finally:
        await vault.close()


async def test_renewal_task_renews_then_relogs_before_max_ttl(
    openbao: VaultFixture, private_key: PrivateKey
) -> None:
    vault = KeyVault(_approle_config(openbao, token_ttl="2s", token_max_ttl="4s"))
    ws = new_workspace_id()
    with capture_logs() as logs:
        await vault.start()
        try:
            encrypted = await vault.encrypt(ws, private_key)
            await asyncio.sleep(4.5)  # past the first token's max TTL
            vault.forget(ws)
            assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
        finally:
            await vault.close()
    events = [e["event"] for e in logs]
    assert events.count("vault.token_renewed") >= 1
    assert events.count("vault.approle_login") >= 2
    # The background task kept the token alive: no call ever hit an expired token.
    assert "vault.denied_relogin" not in events


async def test_static_token_is_renewed(openbao: VaultFixture, private_key: PrivateKey) -> None:
    token = openbao.mint_token(ttl="2s")
    vault = KeyVault(VaultConfig(addr=openbao.addr, token=token))
    await vault.start()
    try:
        await asyncio.sleep(3.0)  # longer than the TTL it was minted with
        ws = new_workspace_id()
        encrypted = await vault.encrypt(ws, private_key)
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
    finally:
        await vault.close()


async def test_approle_relogs_when_its_token_is_revoked(
    openbao: VaultFixture, private_key: PrivateKey
) -> None:
    vault = KeyVault(_approle_config(openbao))
    await vault.start()
    try:
        ws = new_workspace_id()
        await vault.encrypt(ws, private_key)
        # An operator revokes the live token; the next call logs in again by itself.
        openbao.root_client().auth.token.revoke(vault._client.token)
        encrypted = await vault.encrypt(ws, private_key)
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
    finally:
        await vault.close()


async def test_bad_token_is_denied(openbao: VaultFixture, private_key: PrivateKey) -> None:
    vault = KeyVault(VaultConfig(addr=openbao.addr, token="s.not-a-real-token"))
    await vault.start()
    try:
        with pytest.raises(VaultDenied):
            await vault.encrypt(new_workspace_id(), private_key)
        assert not await vault.healthy()
    finally:
        await vault.close()


async def test_token_without_transit_policy_is_denied(
    openbao: VaultFixture, private_key: PrivateKey
) -> None:
    token = openbao.mint_token(policies=("default",))
    vault = KeyVault(VaultConfig(addr=openbao.addr, token=token))
    await vault.start()
    try:
        with pytest.raises(VaultDenied):
            await vault.encrypt(new_workspace_id(), private_key)
    finally:
        await vault.close()


async def test_a_token_file_rotated_by_an_agent_is_read_again_when_vault_refuses(
    openbao: VaultFixture, private_key: PrivateKey, tmp_path: Path
) -> None:
    """VAULT_TOKEN_FILE as a Vault Agent sink: the agent replaces the token; the forwarder
    takes the new one at the first refusal of the old, without a restart."""
    token_file = tmp_path / "vault-token"
    token_file.write_text(openbao.mint_token() + "\n")
    config = VaultConfig.from_env({"VAULT_ADDR": openbao.addr, "VAULT_TOKEN_FILE": str(token_file)})
    assert config.token_file == token_file
    vault = KeyVault(config)
    await vault.start()
    try:
        ws = new_workspace_id()
        encrypted = await vault.encrypt(ws, private_key)
        old = vault._client.token
        openbao.root_client().auth.token.revoke(old)
        token_file.write_text(openbao.mint_token())
        vault.forget(ws)
        with capture_logs() as logs:
            assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
        assert [e["event"] for e in logs].count("vault.token_file_changed") == 1
        # The file still holds the refused token: the refusal stands (fail closed).
        openbao.root_client().auth.token.revoke(vault._client.token)
        with pytest.raises(VaultDenied):
            await vault.encrypt(ws, private_key)
    finally:
        await vault.close()


async def test_a_rotated_secret_id_file_is_used_at_the_next_login(
    openbao: VaultFixture, private_key: PrivateKey, tmp_path: Path
) -> None:
    role = f"r-{new_workspace_id()}"
    creds = openbao.approle_credentials(role_name=role)
    secret_file = tmp_path / "secret-id"
    secret_file.write_text(creds.secret_id + "\n")
    config = VaultConfig.from_env(
        {
            "VAULT_ADDR": openbao.addr,
            "VAULT_ROLE_ID": creds.role_id,
            "VAULT_SECRET_ID_FILE": str(secret_file),
        }
    )
    vault = KeyVault(config)
    await vault.start()
    try:
        ws = new_workspace_id()
        await vault.encrypt(ws, private_key)
        # The orchestrator rotates the secret id: a new one in the file, the old one destroyed.
        root = openbao.root_client()
        new_secret = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
        secret_file.write_text(new_secret)
        root.auth.approle.destroy_secret_id(role, creds.secret_id)
        root.auth.token.revoke(vault._client.token)
        encrypted = await vault.encrypt(ws, private_key)  # re-login with the new secret id
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
    finally:
        await vault.close()
