"""``elido-forwarder check``: everything start-up would trip on, found before start-up.

Each check returns problem lines (empty when fine), each naming the variable to fix. The
checks change nothing: no migration, no key created, no port bound.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Mapping

from server._config import ForwarderConfig, ServerConfig, load_config
from server._env import ConfigError
from server._reload import load_tls, load_tokens
from server.store import SqliteConfig
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


def check_store(config: SqliteConfig) -> list[str]:
    """The store can be opened for writing (read-only look: no file is created or migrated)."""
    path = config.path
    if path.exists():
        if not path.is_file():
            return [f"FORWARDER_DB_PATH: {path} is not a file"]
        # WAL mode writes -wal and -shm files beside the database: its folder must be writable.
        for target in (path, path.parent):
            if not os.access(target, os.R_OK | os.W_OK):
                return [f"FORWARDER_DB_PATH: {target} is not writable by this user"]
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                connection.close()
        except sqlite3.Error as exc:
            return [f"FORWARDER_DB_PATH: {path} is not a usable SQLite database ({exc})"]
        return []
    # A new database: the nearest existing folder must let us create the rest.
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return [f"FORWARDER_DB_PATH: cannot create {path}: {parent} is not a writable folder"]
    return []


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
        *check_store(config.store),
        *asyncio.run(check_vault(config.vault)),
    ]


__all__ = ["check", "check_files", "check_store", "check_vault"]
