"""``elido-fwd tokens``: create (printed once, only the hash stored), list, revoke."""

from __future__ import annotations

import hashlib
import io
import json
import stat
from pathlib import Path

from client.cli.__main__ import run
from server._auth import Role, TokenRegistry


def _cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    code = run(list(argv), stdin=io.StringIO(), stdout=stdout, stderr=stderr, env=env or {})
    return code, stdout.getvalue(), stderr.getvalue()


def test_create_prints_the_token_once_and_stores_only_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    code, out, err = _cli("tokens", "create", "--file", str(path), "--name", "edge",
                          "--role", "ingest")  # fmt: skip
    assert code == 0, err
    token = out.strip()
    assert len(token) >= 43  # 256 bits, URL-safe base64
    text = path.read_text()
    assert token not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "SIGHUP" in err
    assert token not in err
    # The server reads what the CLI wrote.
    principal = TokenRegistry.from_file(path).authenticate(f"Bearer {token}")
    assert principal is not None
    assert principal.name == "edge"
    assert principal.roles == {Role.INGEST}
    # Nothing else is left behind in the folder but the lock file.
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tokens.json.lock", "tokens.json"]


def test_a_second_token_for_a_name_needs_replace(tmp_path: Path) -> None:
    env = {"FORWARDER_TOKENS_FILE": str(tmp_path / "tokens.json")}
    _, first, _ = _cli("tokens", "create", "--name", "ops", "--role", "admin", env=env)
    code, out, err = _cli("tokens", "create", "--name", "ops", "--role", "admin", env=env)
    assert code == 4
    assert out == ""
    assert "--replace" in err
    code, second, _ = _cli(
        "tokens", "create", "--name", "ops", "--role", "admin", "--replace", env=env
    )
    assert code == 0
    registry = TokenRegistry.from_file(tmp_path / "tokens.json")
    assert len(registry) == 1
    assert registry.authenticate(f"Bearer {first.strip()}") is None
    assert registry.authenticate(f"Bearer {second.strip()}") is not None


def test_out_writes_a_new_private_file_instead_of_stdout(tmp_path: Path) -> None:
    out_file = tmp_path / "edge.token"
    code, out, _ = _cli("tokens", "create", "--file", str(tmp_path / "t.json"), "--name", "edge",
                        "--role", "ingest", "--out", str(out_file))  # fmt: skip
    assert code == 0
    assert out == ""
    assert stat.S_IMODE(out_file.stat().st_mode) == 0o600
    token = out_file.read_text().strip()
    assert TokenRegistry.from_file(tmp_path / "t.json").authenticate(f"Bearer {token}")
    code, _, err = _cli("tokens", "create", "--file", str(tmp_path / "t.json"), "--name", "b",
                        "--role", "ingest", "--out", str(out_file))  # fmt: skip
    assert code == 2
    assert "exists" in err
    assert out_file.read_text().strip() == token  # never overwritten


def test_list_shows_names_and_roles_never_tokens(tmp_path: Path) -> None:
    env = {"FORWARDER_TOKENS_FILE": str(tmp_path / "tokens.json")}
    _, token, _ = _cli("tokens", "create", "--name", "edge", "--role", "ingest", env=env)
    _cli("tokens", "create", "--name", "ops", "--role", "admin", "--role", "ingest", env=env)
    code, out, _ = _cli("tokens", "list", env=env)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "ROLES", "SHA256"]
    assert [line.split()[:2] for line in lines[1:]] == [["edge", "ingest"], ["ops", "admin,ingest"]]
    assert token.strip() not in out
    code, out, _ = _cli("tokens", "list", "--json", env=env)
    assert [(t["name"], t["roles"]) for t in json.loads(out)["tokens"]] == [
        ("edge", ["ingest"]),
        ("ops", ["admin", "ingest"]),
    ]


def test_revoke(tmp_path: Path) -> None:
    env = {"FORWARDER_TOKENS_FILE": str(tmp_path / "tokens.json")}
    _, token, _ = _cli("tokens", "create", "--name", "edge", "--role", "ingest", env=env)
    assert _cli("tokens", "revoke", "--name", "edge", env=env)[0] == 0
    registry = TokenRegistry.from_file(tmp_path / "tokens.json")
    assert registry.authenticate(f"Bearer {token.strip()}") is None
    code, _, err = _cli("tokens", "revoke", "--name", "edge", env=env)
    assert code == 3
    assert "no token named edge" in err


def test_errors_are_one_line_with_the_documented_exit_code(tmp_path: Path) -> None:
    code, _, err = _cli("tokens", "list")
    assert (code, err) == (2, "elido-fwd: error: say which token file: --file PATH or"
                              " FORWARDER_TOKENS_FILE\n")  # fmt: skip
    code, _, err = _cli("tokens", "list", "--file", str(tmp_path / "none.json"))
    assert code == 3
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    code, _, err = _cli("tokens", "revoke", "--file", str(bad), "--name", "x")
    assert code == 1
    assert err.count("\n") == 1
    assert bad.read_text() == "[1, 2]"
    code, _, err = _cli(
        "tokens", "create", "--file", str(bad), "--name=bad name", "--role", "admin"
    )
    assert code == 4
    code, _, err = _cli("tokens", "create", "--file", str(bad), "--name", "x", "--role", "root")
    assert code == 2
