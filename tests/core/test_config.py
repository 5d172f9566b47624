"""Settings: every bad value is one line naming its variable and exit 2, never a traceback;
secrets as files; ``elido-forwarder --help``, ``--version`` and ``check``."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server._config import ConfigError, load_config
from tests.support.forwarder import REPO
from tests.support.openbao import VaultFixture

BASE = {
    "VAULT_ADDR": "http://127.0.0.1:8200",
    "VAULT_TOKEN": "s.forwardertoken",
    "FORWARDER_TOKENS_FILE": "/etc/elido/tokens.json",
}


def _problems(**env: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as raised:
        load_config({**BASE, **env})
    return raised.value.problems


def test_defaults_need_only_vault_and_the_token_file() -> None:
    config = load_config(BASE)
    assert config.vault.token == "s.forwardertoken"
    assert config.server.log_level == "info"
    assert config.server.metrics_listen == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FORWARDER_LOG_LEVEL", "loud"),
        ("FORWARDER_LOG_FORMAT", "xml"),
        ("FORWARDER_METRICS_LISTEN", "nope"),
        ("FORWARDER_METRICS_LISTEN", "127.0.0.1:99999"),
        ("FORWARDER_LISTEN", "localhost"),
        ("FORWARDER_GRACE_S", "soon"),
        ("FORWARDER_GRACE_S", "-1"),
        ("FORWARDER_INTAKE_WORKERS", "1.5"),
        ("FORWARDER_INTAKE_WORKERS", "65"),
        ("FORWARDER_MAX_MESSAGE_BYTES", "0"),
        ("FORWARDER_DB_SYNCHRONOUS", "OFF"),
        ("FORWARDER_DB_BUSY_TIMEOUT_MS", "-5"),
        ("FORWARDER_ATTRIBUTION_WINDOW_S", "0"),
        ("KLAVIYO_BASE_URL", "a.klaviyo.com"),
        ("KLAVIYO_TIMEOUT_S", "nan"),
        ("KLAVIYO_EVENTS_BURST_PER_S", "0"),
        ("FORWARDER_DELIVERY", "maybe"),
        ("FORWARDER_RETRY_BASE_S", "0"),
        ("FORWARDER_POLL_INTERVAL_S", "x"),
        ("FORWARDER_VAULT_TIMEOUT_S", "0"),
        ("FORWARDER_KEY_CACHE_TTL_S", "-1"),
        ("FORWARDER_KEY_CACHE_MAX_ENTRIES", "many"),
        ("FORWARDER_VAULT_KEY_PREFIX", "a/b"),
        ("VAULT_ADDR", "127.0.0.1:8200"),
        ("VAULT_CACERT", "/nonexistent/ca.pem"),
    ],
)
def test_a_bad_value_is_one_problem_naming_its_variable(name: str, value: str) -> None:
    [problem] = _problems(**{name: value})
    assert problem.startswith(name)
    assert "\n" not in problem


def test_every_problem_is_reported_at_once() -> None:
    problems = _problems(FORWARDER_LOG_LEVEL="loud", FORWARDER_METRICS_LISTEN="x", VAULT_ADDR="")
    assert [p.split()[0] for p in problems] == [
        "FORWARDER_METRICS_LISTEN",
        "FORWARDER_LOG_LEVEL",
        "VAULT_ADDR",
    ]


def test_metrics_port_alone_means_loopback() -> None:
    config = load_config({**BASE, "FORWARDER_METRICS_LISTEN": ":9464"})
    assert config.server.metrics_listen == "127.0.0.1:9464"


@pytest.mark.parametrize(
    "address", ["0.0.0.0:50051", "[::1]:50051", "[::]:0", "localhost:1", "unix:/run/fwd.sock"]
)
def test_listen_addresses_grpc_accepts_are_accepted(address: str) -> None:
    assert load_config({**BASE, "FORWARDER_LISTEN": address}).server.listen == address


def test_tls_settings_go_together() -> None:
    assert _problems(FORWARDER_TLS_CERT="/c.pem")[0].startswith("FORWARDER_TLS_CERT and")
    assert _problems(FORWARDER_TLS_CLIENT_CA="/ca.pem")[0].startswith("FORWARDER_TLS_CLIENT_CA")


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s.fromfile\n")
    (tmp_path / "secret-id").write_text("secret-from-file")
    env = {
        "VAULT_ADDR": "http://127.0.0.1:8200",
        "VAULT_TOKEN_FILE": str(tmp_path / "token"),
        "VAULT_ROLE_ID": "role",
        "VAULT_SECRET_ID_FILE": str(tmp_path / "secret-id"),
        "FORWARDER_TOKENS_FILE": "/t.json",
    }
    config = load_config(env)
    assert config.vault.token == "s.fromfile"
    assert config.vault.secret_id == "secret-from-file"


def test_secret_file_problems_name_the_variable_and_never_the_secret(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "token").write_text("s.secretvalue")
    cases = {
        "VAULT_TOKEN_FILE: ": {"VAULT_TOKEN_FILE": str(tmp_path / "missing")},
        "VAULT_TOKEN_FILE: " + str(tmp_path / "empty"): {
            "VAULT_TOKEN_FILE": str(tmp_path / "empty")
        },
        "VAULT_TOKEN and VAULT_TOKEN_FILE are both set": {
            "VAULT_TOKEN": "s.secretvalue",
            "VAULT_TOKEN_FILE": str(tmp_path / "token"),
        },
    }
    for start, env in cases.items():
        problems = _problems(**{"VAULT_TOKEN": "", **env})
        assert problems[0].startswith(start), problems
        assert not any("s.secretvalue" in p for p in problems)


def test_vault_login_methods() -> None:
    jwt = {"VAULT_TOKEN": "", "VAULT_JWT_ROLE": "forwarder", "VAULT_JWT_FILE": "/nonexistent/jwt"}
    [problem] = _problems(**jwt)
    assert problem.startswith("VAULT_JWT_FILE: /nonexistent/jwt is not a readable file")
    assert _problems(VAULT_TOKEN="")[0].startswith("VAULT_TOKEN is not set")
    assert _problems(VAULT_ROLE_ID="r")[0].startswith("VAULT_ROLE_ID and VAULT_SECRET_ID")
    both = _problems(VAULT_ROLE_ID="r", VAULT_SECRET_ID="s", VAULT_JWT_ROLE="j", VAULT_JWT_FILE="/")
    assert any(p.startswith("VAULT_ROLE_ID and VAULT_JWT_ROLE are both set") for p in both)


# -- the command line ------------------------------------------------------------------------


def _run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "FORWARDER_"))}
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        cwd=REPO,
        env={**clean, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "protos")]), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_and_version_do_not_start_the_server() -> None:
    helped = _run("--help", env={}, timeout=20)
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: elido-forwarder")
    assert "check" in helped.stdout
    version = _run("--version", env={}, timeout=20)
    assert version.returncode == 0
    assert version.stdout.startswith("elido-forwarder ")


def test_bad_settings_end_start_up_with_one_line_each_and_exit_2(tmp_path: Path) -> None:
    env = {
        **BASE,
        "FORWARDER_LOG_LEVEL": "loud",
        "FORWARDER_METRICS_LISTEN": "nope",
        "FORWARDER_LOG_FORMAT": "json",
    }
    result = _run(env=env, timeout=20)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [line["error"].split()[0] for line in lines] == [
        "FORWARDER_METRICS_LISTEN",
        "FORWARDER_LOG_LEVEL",
    ]


def test_unusable_files_end_start_up_with_one_line(tmp_path: Path, openbao: VaultFixture) -> None:
    (tmp_path / "tokens.json").write_text('{"tokens": [{"role": "admin"}]}')
    env = {
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": openbao.forwarder_token,
        "FORWARDER_DB_PATH": str(tmp_path / "db"),
        "FORWARDER_TOKENS_FILE": str(tmp_path / "tokens.json"),
        "FORWARDER_LISTEN": "127.0.0.1:0",
        "FORWARDER_LOG_FORMAT": "json",
    }
    result = _run(env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [json.loads(x) for x in result.stderr.splitlines() if "bad configuration" in x]
    assert line["error"].startswith("FORWARDER_TOKENS_FILE: ")
    assert "tokens[0] is malformed" in line["error"]


def _tokens_file(directory: Path) -> Path:
    path = directory / "tokens.json"
    digest = hashlib.sha256(b"t").hexdigest()
    path.write_text(json.dumps({"tokens": [{"name": "a", "role": "admin", "sha256": digest}]}))
    return path


def test_check_passes_with_a_working_setup(
    tmp_path: Path, openbao: VaultFixture, pki: Path
) -> None:
    env = {
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": openbao.forwarder_token,
        "FORWARDER_DB_PATH": str(tmp_path / "new" / "forwarder.db"),
        "FORWARDER_TOKENS_FILE": str(_tokens_file(tmp_path)),
        "FORWARDER_TLS_CERT": str(pki / "server.pem"),
        "FORWARDER_TLS_KEY": str(pki / "server.key"),
        "FORWARDER_TLS_CLIENT_CA": str(pki / "ca.pem"),
    }
    result = _run("check", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok:")
    assert not (tmp_path / "new").exists()  # a check changes nothing


def test_check_reports_each_problem_on_one_line(
    tmp_path: Path, openbao: VaultFixture, pki: Path
) -> None:
    # A token Vault knows, whose policy lets it look itself up but not decrypt.
    root = openbao.root_client()
    root.sys.create_or_update_policy(
        name="lookup-only", policy='path "auth/token/lookup-self" { capabilities = ["read"] }'
    )
    token = root.auth.token.create(policies=["lookup-only"], no_default_policy=True)["auth"][
        "client_token"
    ]
    (tmp_path / "db").mkdir()
    env = {
        "VAULT_ADDR": openbao.addr,
        "VAULT_TOKEN": token,
        "FORWARDER_DB_PATH": str(tmp_path / "db"),
        "FORWARDER_TOKENS_FILE": str(tmp_path / "missing.json"),
        "FORWARDER_TLS_CERT": str(pki / "server.pem"),
        "FORWARDER_TLS_KEY": str(pki / "client.key"),  # not the certificate's key
    }
    result = _run("check", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("FORWARDER_TOKENS_FILE: cannot read")
    assert lines[1].startswith("FORWARDER_TLS_CERT, FORWARDER_TLS_KEY:")
    assert lines[2].startswith("FORWARDER_DB_PATH: ")
    assert "is not a file" in lines[2]
    assert "may not decrypt with transit/decrypt/elido-ws-" in lines[3]
    assert token not in result.stdout + result.stderr


def test_check_reports_an_unreachable_vault(tmp_path: Path) -> None:
    env = {
        "VAULT_ADDR": "http://127.0.0.1:9",
        "VAULT_TOKEN": "s.forwardertoken",
        "FORWARDER_VAULT_TIMEOUT_S": "2",
        "FORWARDER_DB_PATH": str(tmp_path / "forwarder.db"),
        "FORWARDER_TOKENS_FILE": str(_tokens_file(tmp_path)),
    }
    result = _run("check", env=env)
    assert result.returncode == 2
    [line] = result.stdout.splitlines()
    assert line.startswith("VAULT_ADDR: cannot log in to http://127.0.0.1:9")


@pytest.mark.parametrize("variable", ["FORWARDER_LISTEN", "FORWARDER_METRICS_LISTEN"])
def test_an_address_in_use_ends_start_up_with_one_line(
    tmp_path: Path, openbao: VaultFixture, variable: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "VAULT_ADDR": openbao.addr,
            "VAULT_TOKEN": openbao.forwarder_token,
            "FORWARDER_DB_PATH": str(tmp_path / "forwarder.db"),
            "FORWARDER_TOKENS_FILE": str(_tokens_file(tmp_path)),
            "FORWARDER_LISTEN": "127.0.0.1:0",
            "FORWARDER_INTAKE_WORKERS": "1",
            "FORWARDER_LOG_FORMAT": "json",
            variable: f"127.0.0.1:{port}",
        }
        result = _run(env=env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = [json.loads(x) for x in result.stderr.splitlines() if "bad configuration" in x]
    assert line["error"].startswith(f"{variable}: cannot listen on 127.0.0.1:{port}")
