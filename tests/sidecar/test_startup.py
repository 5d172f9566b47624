"""The sidecar as a real process: bad settings, redacted logs, a private spool."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sidecar.helpers import click_record, http_request
from tests.sidecar.processes import ROOT, SidecarProcess

ENV = {
    **os.environ,
    "PYTHONPATH": f"{ROOT}:{ROOT / 'protos'}",
    "ELIDO_SIDECAR_HTTP_PORT": "0",
}


def run_sidecar(
    tmp: Path, env: dict[str, str], config: str = ""
) -> subprocess.CompletedProcess[str]:
    path = tmp / "sidecar.toml"
    path.write_text(f'[spool]\ndirectory = "{tmp / "spool"}"\n' + config)
    return subprocess.run(
        [sys.executable, "-m", "ingest_sidecar", "--config", str(path)],
        env={**ENV, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def busy_port() -> object:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("env", "config", "named"),
    [
        ({"ELIDO_SIDECAR_LOG_LEVEL": "loud"}, "", "log.level"),
        ({"ELIDO_SIDECAR_SPOOL_MAX_BYTES": "lots"}, "", "ELIDO_SIDECAR_SPOOL_MAX_BYTES"),
        ({"ELIDO_SIDECAR_HTTP_PORT": "70000"}, "", "http.port"),
        ({"ELIDO_SIDECAR_HTTP_IDLE_TIMEOUT_S": "-1"}, "", "http.idle_timeout_s"),
        ({"ELIDO_SIDECAR_STREAM_CA_FILE": "/nonexistent/ca.pem"}, "", "stream.ca_file"),
        ({"ELIDO_SIDECAR_STREAM_TOKEN_FILE": "/nonexistent/token"}, "", "stream.token_file"),
        ({"ELIDO_SIDECAR_SHUTDOWN_GRACE_S": "soon"}, "", "ELIDO_SIDECAR_SHUTDOWN_GRACE_S"),
        ({}, "[tail]\nmax_line_bytes = 'big'\n", "tail.max_line_bytes"),
        ({}, "[stream]\nbatch_max_clicks = 0\n", "stream.batch_max_clicks"),
        ({"ELIDO_SIDECAR_HTTP_HOST": "203.0.113.77"}, "", "http.host"),
        ({"ELIDO_SIDECAR_HTTP_PORT": "BUSY"}, "", "http.port"),
        ({"ELIDO_SIDECAR_SPOOL_DIRECTORY": "FILE/spool"}, "", "spool.directory"),
    ],
)
def test_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, busy_port: int, env: dict[str, str], config: str, named: str
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    env = {
        k: v.replace("BUSY", str(busy_port)).replace("FILE", str(tmp_path / "a-file"))
        for k, v in env.items()
    }
    result = run_sidecar(tmp_path, env, config)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("elido-sidecar:")]
    assert len(lines) == 1, result.stderr
    assert named in lines[0]


async def test_logs_are_redacted_and_the_spool_is_private(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        sidecar = SidecarProcess(tmp_path, "", "redact", token="ingest-token")
        port = await sidecar.wait_listening()
    finally:
        os.umask(old_umask)
    try:
        bad_line = b'{"workspace_id": "ws-1", "email": "secret.person@example.com", "broken'
        url_email = json.dumps(
            click_record(
                1,
                workspace_id="bad workspace",
                destination_url="https://shop.example/p?email=hidden.person%40example.com",
            )
        ).encode()
        status, _, _ = await http_request(port, "POST", "/v1/clicks", bad_line + b"\n" + url_email)
        assert status == 202
        status, _, _ = await http_request(
            port, "POST", "/v1/clicks", json.dumps(click_record(2)).encode()
        )
        assert status == 202
    finally:
        assert sidecar.terminate() == 0
    log = sidecar.log.read_text()
    # The malformed line was logged (with its prefix), the address in it masked.
    assert '"reason": "malformed_json"' in log
    assert "s***@example.com" in log
    assert "secret.person" not in log
    assert "ingest-token" not in log
    spool = tmp_path / "spool"
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    files = list(spool.iterdir())
    assert {p.name for p in files} >= {"ack.cursor"}
    assert any(p.name.startswith("seg-") for p in files)
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
