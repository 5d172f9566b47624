"""``elido-forwarder check``: everything start-up would trip on, found before start-up.

Each check returns problem lines (empty when fine), each naming the variable to fix. The
checks change nothing: no migration, no key created, no port bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from server._config import ForwarderConfig, ServerConfig, load_config
from server._env import ConfigError
from server._reload import load_tls, load_tokens
from server.store import check_store
from server.vault import KeyVault, VaultConfig


def check_files(config: ServerConfig) -> list[str]:
    """The token file and the TLS files parse, and the key matches the certificate."""
    problems: list[str] = []
    try:
        load_tokens(config.tokens_file)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if config.tls is not None:
        try:
            load_tls(config.tls)
        except ConfigError as exc:
            problems.extend(exc.problems)
    return problems


async def check_vault(config: VaultConfig) -> list[str]:
    """Vault answers, the credentials log in, and the identity may decrypt workspace keys."""
    vault = KeyVault(config)
    try:
        return await vault.check()
    finally:
        await vault.close()


def check(env: Mapping[str, str]) -> list[str]:
    """Every problem with the configuration in ``env``, one line each; empty if none."""
    try:
        config: ForwarderConfig = load_config(env)
    except ConfigError as exc:
        return list(exc.problems)
    return [
        *check_files(config.server),
        *asyncio.run(check_store(config.store)),
        *asyncio.run(check_vault(config.vault)),
    ]


__all__ = ["check", "check_files", "check_vault"]
