"""The local OpenBao (persistent storage) and `python -m server.devstack`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server._secret import PrivateKey
from server.devstack._openbao import OpenBaoServer, PortInUseError, free_port, port_is_free
from server.vault import KeyVault
from tests.support.openbao import FileVaultFixture, new_workspace_id

FAKE_FORWARDER = Path(__file__).with_name("fake_forwarder.py")


async def test_data_survives_restart(
    openbao_file_server: FileVaultFixture, private_key: PrivateKey
) -> None:
    server = openbao_file_server.server
    assert stat.S_IMODE(server.init_file.stat().st_mode) == 0o600
    ws = new_workspace_id()
    vault = KeyVault(openbao_file_server.vault_config())
    await vault.start()
    encrypted = await vault.encrypt(ws, private_key)
    await vault.close()

    server.restart()

    # A new KeyVault (empty cache), the token minted before the restart: still decrypts.
    vault = KeyVault(openbao_file_server.vault_config())
    await vault.start()
    try:
        assert await vault.decrypt(ws, encrypted.ciphertext) == private_key
    finally:
        await vault.close()


def test_port_in_use_is_reported(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = OpenBaoServer(tmp_path / "bao", port=port)
        with pytest.raises(PortInUseError, match=f"{port} is already in use"):
            server.start()


def _start_devstack(data_dir: Path, out: Path, vault_port: int) -> subprocess.Popen[str]:
    out.mkdir(parents=True, exist_ok=True)
    code = (
        "import dataclasses, os, sys\n"
        "from server.devstack.__main__ import run\n"
        "from server.devstack._config import DevstackConfig\n"
        "config = DevstackConfig.from_env(os.environ)\n"
        f"argv = (sys.executable, {str(FAKE_FORWARDER)!r}, {str(out)!r})\n"
        "sys.exit(run(dataclasses.replace(config, forwarder_argv=argv)))\n"
    )
    env = {
        **os.environ,
        "FORWARDER_DATA_DIR": str(data_dir),
        "DEVSTACK_VAULT_PORT": str(vault_port),
        "DEVSTACK_LISTEN": "127.0.0.1:50999",
        "KLAVIYO_BASE_URL": "http://127.0.0.1:9/",
        "VAULT_TOKEN": "s.from-the-developers-shell",
    }
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"devstack exited early:\n{proc.stdout.read() if proc.stdout else ''}"
            )
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.05)


def _ctrl_c(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    return output


@pytest.mark.slow
def test_devstack_runs_forwarder_against_persistent_openbao(tmp_path: Path) -> None:
    data_dir, vault_port = tmp_path / "var", free_port()

    first = _start_devstack(data_dir, tmp_path / "run1", vault_port)
    _wait_for(tmp_path / "run1" / "ready", first)
    output = _ctrl_c(first)

    report = json.loads((tmp_path / "run1" / "report.json").read_text())
    env = report["env"]
    assert env["FORWARDER_LISTEN"] == "127.0.0.1:50999"
    assert env["FORWARDER_DB_PATH"] == str(data_dir / "forwarder.db")
    assert env["FORWARDER_TOKENS_FILE"] == str(data_dir / "tokens.json")
    assert env["FORWARDER_LOG_FORMAT"] == "console"
    assert env["VAULT_ADDR"] == f"http://127.0.0.1:{vault_port}"
    assert "VAULT_TOKEN" not in env  # the shell's token is for another vault
    assert env["VAULT_ROLE_ID"]
    assert env["VAULT_SECRET_ID"]
    # The forwarder was stopped (and drained) while OpenBao was still up; then OpenBao went.
    assert json.loads((tmp_path / "run1" / "vault_up_at_sigterm").read_text()) is True
    assert port_is_free("127.0.0.1", vault_port)

    dev_tokens = json.loads((data_dir / "dev-tokens.json").read_text())["tokens"]
    assert stat.S_IMODE((data_dir / "dev-tokens.json").stat().st_mode) == 0o600
    hashed = json.loads((data_dir / "tokens.json").read_text())["tokens"]
    assert {(t["name"], t["role"]) for t in hashed} == {
        ("dev-admin", "admin"),
        ("dev-ingest", "ingest"),
    }
    by_name = {t["name"]: t["token"] for t in dev_tokens}
    for entry in hashed:
        assert entry["sha256"] == hashlib.sha256(by_name[entry["name"]].encode()).hexdigest()
    admin = by_name["dev-admin"]
    assert f"-H 'authorization: Bearer {admin}' 127.0.0.1:50999 list" in output

    # The first run's ciphertext travels to the second run's forwarder.
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "ciphertext.json").write_text(
        (tmp_path / "run1" / "ciphertext.json").read_text()
    )
    second = _start_devstack(data_dir, tmp_path / "run2", vault_port)
    _wait_for(tmp_path / "run2" / "ready", second)
    _ctrl_c(second)
    assert json.loads((tmp_path / "run2" / "report.json").read_text())["decrypted_ok"] is True
    again = json.loads((data_dir / "dev-tokens.json").read_text())["tokens"]
    assert again == dev_tokens


def test_devstack_reports_a_taken_port(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        proc = _start_devstack(tmp_path / "var", tmp_path / "out", port)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert f"port {port}" in output
    assert "DEVSTACK_VAULT_PORT" in output
