"""Vault's JWT/OIDC auth method: login without a stored secret (real OpenBao).

The test plays the identity provider (a Kubernetes API server issuing projected service
account tokens) with a locally generated RSA key that OpenBao trusts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from server._secret import PrivateKey
from server.vault import KeyVault, VaultConfig, VaultDenied
from tests.support.jwt import AUDIENCE, JwtIssuer, create_jwt_role, enable_jwt_auth
from tests.support.openbao import POLICY_NAME, VaultFixture, new_workspace_id


@dataclass
class JwtSetup:
    openbao: VaultFixture
    issuer: JwtIssuer
    mount: str

    def role(self, **token: str) -> str:
        name = f"r-{new_workspace_id()}"
        create_jwt_role(self.openbao.root_client(), self.mount, name, POLICY_NAME, **token)
        return name

    def config(self, role: str, jwt_file: Path) -> VaultConfig:
        return VaultConfig(
            addr=self.openbao.addr, jwt_role=role, jwt_file=jwt_file, jwt_mount=self.mount
        )


@pytest.fixture(scope="session")
def jwt_setup(
    openbao: VaultFixture, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[JwtSetup]:
    issuer = JwtIssuer(tmp_path_factory.mktemp("jwt-issuer"))
    mount = f"jwt-{new_workspace_id()}"
    enable_jwt_auth(openbao.root_client(), mount, issuer)
    yield JwtSetup(openbao, issuer, mount)
    openbao.root_client().sys.disable_auth_method(mount)


async def test_jwt_login_gets_only_the_forwarder_policy(
    jwt_setup: JwtSetup, tmp_path: Path, private_key: PrivateKey
) -> None:
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt_setup.issuer.token() + "\n")
    vault = KeyVault(jwt_setup.config(jwt_setup.role(), jwt_file))
    await vault.start()
    try:
        ws = new_workspace_id()
        encrypted = await vault.encrypt(ws, private_key)
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
        info = jwt_setup.openbao.root_client().auth.token.lookup(vault._client.token)["data"]
        assert info["policies"] == [POLICY_NAME]
        assert await vault.check() == []
    finally:
        await vault.close()


async def test_renewal_then_relogin_reads_the_rotated_jwt(
    jwt_setup: JwtSetup, tmp_path: Path, private_key: PrivateKey
) -> None:
    """Like a kubelet rotating a projected token: the first JWT expires, a new one replaces
    it in the file; the re-login past the Vault token's max TTL must use the new one."""
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt_setup.issuer.token(lifetime_s=3))
    vault = KeyVault(jwt_setup.config(jwt_setup.role(token_ttl="2s", token_max_ttl="4s"), jwt_file))
    ws = new_workspace_id()
    with capture_logs() as logs:
        await vault.start()
        try:
            encrypted = await vault.encrypt(ws, private_key)
            jwt_file.write_text(jwt_setup.issuer.token())  # rotated before the first expires
            await asyncio.sleep(4.5)  # past the first JWT's expiry and the token's max TTL
            vault.forget(ws)
            assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
        finally:
            await vault.close()
    events = [e["event"] for e in logs]
    assert events.count("vault.token_renewed") >= 1
    assert events.count("vault.jwt_login") >= 2
    assert "vault.denied_relogin" not in events
    assert "vault.token_maintenance_failed" not in events


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "token is expired"),
        ("unknown signing key", "no known key successfully validated the token signature"),
        ("wrong audience", "aud"),
    ],
)
async def test_a_refused_jwt_fails_closed_with_vaults_reason(
    jwt_setup: JwtSetup, tmp_path: Path, private_key: PrivateKey, case: str, reason: str
) -> None:
    if case == "expired":
        jwt = jwt_setup.issuer.token(lifetime_s=60, issued_ago_s=3600)
    elif case == "unknown signing key":
        jwt = JwtIssuer(tmp_path / "other-issuer").token()
    else:
        jwt = jwt_setup.issuer.token(aud=[AUDIENCE + "-other"])
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt)
    vault = KeyVault(jwt_setup.config(jwt_setup.role(), jwt_file))
    await vault.start()
    try:
        with pytest.raises(VaultDenied, match="jwt_login") as raised:
            await vault.encrypt(new_workspace_id(), private_key)
        assert reason in str(raised.value)
        assert jwt not in str(raised.value)
        assert jwt.split(".")[2] not in str(raised.value)
        [problem] = await vault.check()
        assert problem.startswith("VAULT_ADDR: cannot log in")
        assert reason in problem
    finally:
        await vault.close()


async def test_missing_jwt_file_is_a_precise_denial(jwt_setup: JwtSetup, tmp_path: Path) -> None:
    jwt_file = tmp_path / "token"
    vault = KeyVault(jwt_setup.config(jwt_setup.role(), jwt_file))
    await vault.start()
    try:
        with pytest.raises(VaultDenied, match=r"cannot read VAULT_JWT_FILE .*token: No such file"):
            await vault.encrypt(new_workspace_id(), PrivateKey("pk_" + "b" * 34))
    finally:
        await vault.close()
