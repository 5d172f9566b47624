"""Encrypt, decrypt, rewrap and destroy against a real OpenBao."""

from __future__ import annotations

import base64

import hvac.exceptions
import pytest

from server._secret import PrivateKey
from server.vault import EncryptedKey, KeyDestroyed, KeyVault
from tests.support.openbao import VaultFixture, new_workspace_id
from tests.vault.conftest import new_private_key


async def test_round_trip(keyvault: KeyVault, private_key: PrivateKey) -> None:
    ws = new_workspace_id()
    encrypted = await keyvault.encrypt(ws, private_key)
    assert encrypted.ciphertext.startswith("vault:v1:")
    assert encrypted.key_version == 1
    assert await keyvault.decrypt(ws, encrypted.ciphertext) == private_key


async def test_one_transit_key_per_workspace(
    keyvault: KeyVault, openbao: VaultFixture, private_key: PrivateKey
) -> None:
    ws_a, ws_b = new_workspace_id("a"), new_workspace_id("b")
    enc_a = await keyvault.encrypt(ws_a, private_key)
    await keyvault.encrypt(ws_b, private_key)

    keys = openbao.root_client().secrets.transit.list_keys()["data"]["keys"]
    assert f"elido-ws-{ws_a}" in keys
    assert f"elido-ws-{ws_b}" in keys
    created = openbao.root_client().secrets.transit.read_key(f"elido-ws-{ws_a}")["data"]
    assert created["type"] == "aes256-gcm96"
    # Workspace B's key cannot open workspace A's ciphertext.
    with pytest.raises(KeyDestroyed):
        await keyvault.decrypt(ws_b, enc_a.ciphertext)


async def test_ciphertext_reveals_nothing(keyvault: KeyVault, private_key: PrivateKey) -> None:
    ws = new_workspace_id()
    first = await keyvault.encrypt(ws, private_key)
    second = await keyvault.encrypt(ws, private_key)
    raw = private_key.reveal()
    b64 = base64.b64encode(raw.encode()).decode()
    for encrypted in (first, second):
        assert raw not in encrypted.ciphertext
        assert b64 not in encrypted.ciphertext
        assert raw[3:] not in encrypted.ciphertext
    # Fresh nonce per encryption: equal keys do not give equal ciphertexts.
    assert first.ciphertext != second.ciphertext


async def test_destroy_shreds_the_key(
    keyvault: KeyVault, openbao: VaultFixture, private_key: PrivateKey
) -> None:
    ws = new_workspace_id()
    encrypted = await keyvault.encrypt(ws, private_key)
    assert await keyvault.decrypt(ws, encrypted.ciphertext) == private_key  # now cached

    await keyvault.destroy(ws)

    with pytest.raises(KeyDestroyed):
        await keyvault.decrypt(ws, encrypted.ciphertext)
    with pytest.raises(KeyDestroyed):
        await keyvault.latest_version(ws)
    # Not even root can get the key back from the old ciphertext (a store backup is useless).
    with pytest.raises(hvac.exceptions.InvalidRequest):
        openbao.root_client().secrets.transit.decrypt_data(
            f"elido-ws-{ws}", ciphertext=encrypted.ciphertext
        )
    # Idempotent, and fine for a workspace that never had a key.
    await keyvault.destroy(ws)
    await keyvault.destroy(new_workspace_id())


async def test_register_after_destroy_gets_a_new_key(
    keyvault: KeyVault, private_key: PrivateKey
) -> None:
    ws = new_workspace_id()
    old = await keyvault.encrypt(ws, private_key)
    await keyvault.destroy(ws)
    new_key = new_private_key()
    new = await keyvault.encrypt(ws, new_key)
    assert await keyvault.decrypt(ws, new.ciphertext) == new_key
    with pytest.raises(KeyDestroyed):
        await keyvault.decrypt(ws, old.ciphertext)


async def test_rotate_then_rewrap(
    keyvault: KeyVault, openbao: VaultFixture, private_key: PrivateKey
) -> None:
    ws = new_workspace_id()
    old = await keyvault.encrypt(ws, private_key)
    assert await keyvault.latest_version(ws) == 1

    openbao.root_client().secrets.transit.rotate_key(f"elido-ws-{ws}")  # the operator's step

    assert await keyvault.latest_version(ws) == 2
    rewrapped = await keyvault.rewrap(ws, old.ciphertext)
    assert rewrapped.key_version == 2
    assert rewrapped.ciphertext.startswith("vault:v2:")
    assert await keyvault.decrypt(ws, rewrapped.ciphertext) == private_key
    # New encryptions use the new version too.
    assert (await keyvault.encrypt(ws, private_key)).key_version == 2
    # Once the operator retires version 1, only the rewrapped ciphertext still works.
    root = openbao.root_client()
    root.secrets.transit.update_key_configuration(f"elido-ws-{ws}", min_decryption_version=2)
    keyvault.forget(ws)
    with pytest.raises(KeyDestroyed):
        await keyvault.decrypt(ws, old.ciphertext)
    assert await keyvault.decrypt(ws, rewrapped.ciphertext) == private_key


async def test_tampered_ciphertext_is_refused(keyvault: KeyVault, private_key: PrivateKey) -> None:
    ws = new_workspace_id()
    encrypted = await keyvault.encrypt(ws, private_key)
    body = bytearray(base64.b64decode(encrypted.ciphertext.removeprefix("vault:v1:")))
    body[-1] ^= 0x01
    tampered = "vault:v1:" + base64.b64encode(bytes(body)).decode()
    with pytest.raises(KeyDestroyed):
        await keyvault.decrypt(ws, tampered)


@pytest.mark.parametrize("bad", ["", "a/b", "../x", "x" * 65, "sp ace", "ws?x=1"])
async def test_invalid_workspace_id_is_rejected(
    keyvault: KeyVault, private_key: PrivateKey, bad: str
) -> None:
    with pytest.raises(ValueError, match="workspace id"):
        await keyvault.encrypt(bad, private_key)
    with pytest.raises(ValueError, match="workspace id"):
        await keyvault.decrypt(bad, "vault:v1:AAAA")


async def test_healthy(keyvault: KeyVault) -> None:
    assert await keyvault.healthy()


def test_encrypted_key_is_a_value() -> None:
    assert EncryptedKey("vault:v3:x", 3) == EncryptedKey("vault:v3:x", 3)
