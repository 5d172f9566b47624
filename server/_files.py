"""Files that hold recipients' data or secrets: readable by the service's user only.

The database (and its ``-wal`` and ``-shm`` files) holds emails, phone numbers and key
ciphertexts; the development stack's folder holds OpenBao's unseal key and bearer tokens.
New folders are created ``0700`` and new files ``0600`` whatever the umask (SQLite gives the
``-wal`` and ``-shm`` files the database file's mode). Existing ones are never changed
behind the operator's back — a group may be there on purpose — but a wider mode is warned
about at start-up, once per file.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import structlog

_log = structlog.get_logger("server.files")

PRIVATE_DIR: Final = 0o700
PRIVATE_FILE: Final = 0o600


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) with mode 0700; an existing one is left alone."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue
        os.chmod(folder, PRIVATE_DIR)  # mkdir's mode is narrowed by the umask, never widened


def private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (its folder 0700 if missing)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    except FileExistsError:
        return
    os.close(fd)


def wider_than_private(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """The existing ``paths`` that others than their owner may read, write or enter."""
    found: list[tuple[Path, int]] = []
    for path in paths:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & 0o077:
            found.append((path, mode))
    return found


def warn_if_wider(paths: Iterable[Path]) -> list[tuple[Path, int]]:
    """Log a warning for every path :func:`wider_than_private` finds; returns them."""
    found = wider_than_private(paths)
    for path, mode in found:
        private = PRIVATE_DIR if path.is_dir() else PRIVATE_FILE
        _log.warning(
            "file readable by other users",
            path=str(path),
            mode=f"{mode:04o}",
            expected=f"{private:04o}",
            fix=f"chmod {private:o} {path}",
        )
    return found


def secure_database(db_path: Path) -> None:
    """Before SQLite opens ``db_path``: create it private, warn about wider existing files."""
    if str(db_path) == ":memory:":
        return
    private_file(db_path)
    warn_if_wider(
        [
            db_path.parent,
            db_path,
            db_path.with_name(db_path.name + "-wal"),
            db_path.with_name(db_path.name + "-shm"),
        ]
    )
