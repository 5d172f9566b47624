"""docs/vault-policy.hcl grants what the forwarder needs and nothing else."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import hvac
import hvac.exceptions
import pytest

from tests.support.openbao import POLICY_NAME, VaultFixture, new_workspace_id

PLAINTEXT = base64.b64encode(b"pk_0123456789abcdef0123456789abcdef").decode()


@pytest.fixture
def forwarder(openbao: VaultFixture) -> hvac.Client:
    return hvac.Client(url=openbao.addr, token=openbao.forwarder_token)


@pytest.fixture
def key_name(forwarder: hvac.Client) -> str:
    name = f"elido-ws-{new_workspace_id()}"
    forwarder.secrets.transit.encrypt_data(name, plaintext=PLAINTEXT, type="aes256-gcm96")
    return name


def _denied(call: Callable[[], Any]) -> None:
    with pytest.raises(hvac.exceptions.Forbidden):
        call()


def test_token_carries_only_the_forwarder_policy(forwarder: hvac.Client) -> None:
    assert forwarder.auth.token.lookup_self()["data"]["policies"] == [POLICY_NAME]


def test_allows_the_key_lifecycle(forwarder: hvac.Client, key_name: str) -> None:
    transit = forwarder.secrets.transit
    ciphertext = transit.encrypt_data(key_name, plaintext=PLAINTEXT)["data"]["ciphertext"]
    assert transit.decrypt_data(key_name, ciphertext=ciphertext)["data"]["plaintext"] == PLAINTEXT
    assert transit.rewrap_data(key_name, ciphertext=ciphertext)["data"]["ciphertext"]
    assert transit.read_key(key_name)["data"]["latest_version"] == 1
    transit.update_key_configuration(key_name, deletion_allowed=True)
    transit.delete_key(key_name)
    forwarder.auth.token.renew_self()


def test_denies_key_material_and_weakening(forwarder: hvac.Client, key_name: str) -> None:
    transit = forwarder.secrets.transit
    _denied(lambda: transit.export_key(key_name, "encryption-key"))
    _denied(lambda: transit.backup_key(key_name))
    _denied(lambda: transit.update_key_configuration(key_name, exportable=True))
    _denied(lambda: transit.update_key_configuration(key_name, allow_plaintext_backup=True))
    _denied(lambda: transit.update_key_configuration(key_name, min_decryption_version=1))
    _denied(lambda: transit.trim_key(key_name, min_version=1))
    _denied(lambda: transit.list_keys())


def test_denies_keys_outside_the_prefix(forwarder: hvac.Client, openbao: VaultFixture) -> None:
    other = f"billing-{new_workspace_id()}"
    openbao.root_client().secrets.transit.create_key(other)
    transit = forwarder.secrets.transit
    _denied(lambda: transit.encrypt_data(other, plaintext=PLAINTEXT))
    _denied(lambda: transit.decrypt_data(other, ciphertext="vault:v1:AAAA"))
    _denied(lambda: transit.read_key(other))
    _denied(lambda: transit.delete_key(other))


def test_denies_other_key_types(forwarder: hvac.Client) -> None:
    name = f"elido-ws-{new_workspace_id()}"
    _denied(
        lambda: forwarder.secrets.transit.encrypt_data(
            name, plaintext=PLAINTEXT, type="chacha20-poly1305"
        )
    )


def test_denies_everything_else(forwarder: hvac.Client, openbao: VaultFixture) -> None:
    openbao.root_client().secrets.kv.v2.create_or_update_secret(
        "other-team", secret={"password": "x"}
    )
    _denied(
        lambda: forwarder.secrets.kv.v2.read_secret_version(
            "other-team", raise_on_deleted_version=True
        )
    )
    _denied(lambda: forwarder.secrets.kv.v2.create_or_update_secret("mine", secret={"a": "b"}))
    _denied(lambda: forwarder.sys.read_acl_policy(POLICY_NAME))
    _denied(lambda: forwarder.sys.create_or_update_acl_policy("escalate", 'path "*" {}'))
    _denied(lambda: forwarder.auth.token.create(policies=[POLICY_NAME]))
    _denied(lambda: forwarder.sys.enable_secrets_engine("transit", path="transit2"))
    _denied(lambda: forwarder.auth.approle.read_role_id("elido-forwarder"))
