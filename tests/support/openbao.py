"""Real OpenBao servers for tests.

Use with ``pytest_plugins = ["tests.support.openbao"]`` (in a conftest.py) and the fixtures:

* ``openbao`` (session): a ``bao server -dev`` with transit, AppRole and the forwarder's
  least-privilege policy; ``openbao.forwarder_token`` carries only that policy and
  ``openbao.vault_config()`` builds a :class:`VaultConfig` with it. The server is shared by the
  whole session: isolate tests with :func:`new_workspace_id`.
* ``openbao_file_server`` (function): an :class:`OpenBaoServer` with persistent storage under
  ``tmp_path`` that can be stopped, killed and restarted.

The start/initialise/unseal logic lives in ``server.devstack._openbao`` (``make run`` uses it
too); this module only adds the fixtures.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server.devstack._openbao import (
    POLICY_NAME,
    AppRoleCredentials,
    OpenBaoDevServer,
    OpenBaoServer,
)
from server.vault import VaultConfig

__all__ = [
    "POLICY_NAME",
    "AppRoleCredentials",
    "FileVaultFixture",
    "OpenBaoDevServer",
    "OpenBaoServer",
    "VaultFixture",
    "new_workspace_id",
    "openbao",
    "openbao_file_server",
]


def new_workspace_id(prefix: str = "ws") -> str:
    """A workspace id no other test uses (valid: ``[A-Za-z0-9_.-]{1,64}``)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


class VaultFixture:
    """A started OpenBao plus a least-privilege forwarder token for it."""

    def __init__(self, server: OpenBaoDevServer | OpenBaoServer) -> None:
        self.server = server
        self.forwarder_token = server.mint_token()

    @property
    def addr(self) -> str:
        return self.server.addr

    @property
    def root_token(self) -> str:
        return self.server.root_token

    def root_client(self) -> Any:
        """An hvac client with the root token, for arranging and checking from outside."""
        return self.server.root_client()

    def mint_token(self, **kwargs: Any) -> str:
        return self.server.mint_token(**kwargs)

    def approle_credentials(self, **kwargs: Any) -> AppRoleCredentials:
        return self.server.approle_credentials(**kwargs)

    def vault_config(self, **overrides: Any) -> VaultConfig:
        """Config for a KeyVault using the least-privilege token (override any field)."""
        config = VaultConfig(addr=self.addr, token=self.forwarder_token, timeout_s=3.0)
        return replace(config, **overrides)


class FileVaultFixture(VaultFixture):
    """:class:`VaultFixture` around a restartable :class:`OpenBaoServer`."""

    server: OpenBaoServer

    def __init__(self, server: OpenBaoServer) -> None:
        super().__init__(server)
        self.server = server


@pytest.fixture(scope="session")
def openbao() -> Iterator[VaultFixture]:
    server = OpenBaoDevServer()
    server.start()
    try:
        yield VaultFixture(server)
    finally:
        server.stop()


@pytest.fixture
def openbao_file_server(tmp_path: Path) -> Iterator[FileVaultFixture]:
    server = OpenBaoServer(tmp_path / "openbao")
    server.start()
    try:
        yield FileVaultFixture(server)
    finally:
        server.stop()
