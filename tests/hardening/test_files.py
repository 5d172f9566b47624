"""Issue 14 item 5: the database, its -wal/-shm and its folder are the service user's only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.hardening._support import log_lines
from tests.support.calls import forward, make_click, new_key, register
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_database_files_are_created_private_whatever_the_umask(
    forwarder_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    db = tmp_path / "data" / "nested" / "forwarder.db"
    old = os.umask(0o022)  # inherited by the server: files 0644 and folders 0755 by default
    try:
        fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_DB_PATH": str(db)})
    finally:
        os.umask(old)
    ws = new_workspace_id()
    register(fwd, ws, new_key())
    forward(fwd, [make_click(ws, "f1", "jane@example.com")])
    assert mode(db.parent) == 0o700
    assert mode(tmp_path / "data") == 0o700
    for name in ("forwarder.db", "forwarder.db-wal", "forwarder.db-shm", "forwarder.db.writelock"):
        assert mode(db.with_name(name)) == 0o600, name
    assert log_lines(fwd, "file readable by other users") == []


def test_an_existing_wider_database_is_warned_about_at_start_up(
    forwarder_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    folder = tmp_path / "old"
    folder.mkdir(mode=0o700)
    db = folder / "forwarder.db"
    db.touch(mode=0o644)
    os.chmod(db, 0o644)
    fwd: ForwarderProcess = forwarder_factory(env={"FORWARDER_DB_PATH": str(db)})
    warnings = log_lines(fwd, "file readable by other users")
    assert [(w["path"], w["mode"], w["expected"]) for w in warnings] == [(str(db), "0644", "0600")]
    assert warnings[0]["level"] == "warning"
    assert mode(db) == 0o644  # the operator's file is not changed behind their back
