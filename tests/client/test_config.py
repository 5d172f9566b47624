"""Configuration from the environment, and the rules that keep the token safe."""

from __future__ import annotations

from pathlib import Path

import pytest

from client import ClientConfig, ConfigError, TlsConfig


def test_from_env_reads_target_token_file_and_tls(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("secret-token\n")
    config = ClientConfig.from_env(
        {
            "ELIDO_FORWARDER_TARGET": "fwd.internal:443",
            "ELIDO_FORWARDER_TOKEN_FILE": str(token_file),
            "ELIDO_FORWARDER_CA": "/etc/ca.pem",
            "ELIDO_FORWARDER_CERT": "/etc/me.pem",
            "ELIDO_FORWARDER_KEY": "/etc/me.key",
            "ELIDO_FORWARDER_TIMEOUT": "2.5",
        }
    )
    assert config.target == "fwd.internal:443"
    assert config.token == "secret-token"
    assert config.tls == TlsConfig(Path("/etc/ca.pem"), Path("/etc/me.pem"), Path("/etc/me.key"))
    assert config.default_timeout_s == 2.5
    assert "secret-token" not in repr(config)


def test_defaults_to_plaintext_localhost() -> None:
    config = ClientConfig.from_env({})
    assert (config.target, config.token, config.tls) == ("localhost:50051", "", None)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ELIDO_FORWARDER_TOKEN": "a", "ELIDO_FORWARDER_TOKEN_FILE": "/x"}, "only one"),
        ({"ELIDO_FORWARDER_TOKEN_FILE": "/nonexistent/token"}, "cannot read the token file"),
        ({"ELIDO_FORWARDER_TIMEOUT": "soon"}, "number of seconds"),
        ({"ELIDO_FORWARDER_CERT": "/c.pem"}, "both a client certificate and its key"),
        (
            {"ELIDO_FORWARDER_TARGET": "fwd.prod:50051", "ELIDO_FORWARDER_TOKEN": "t"},
            "refusing to send the bearer token in plaintext",
        ),
    ],
)
def test_bad_configuration_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClientConfig.from_env(env)


@pytest.mark.parametrize(
    ("target", "allowed"),
    [
        ("127.0.0.1:1", True),
        ("localhost:5", True),
        ("[::1]:5", True),
        ("unix:/run/f.sock", True),
        ("10.0.0.1:5", False),
        ("fwd.prod:5", False),
    ],
)
def test_plaintext_token_only_to_loopback_unless_insecure(target: str, allowed: bool) -> None:
    env = {"ELIDO_FORWARDER_TARGET": target, "ELIDO_FORWARDER_TOKEN": "t"}
    if allowed:
        assert ClientConfig.from_env(env).target == target
    else:
        with pytest.raises(ConfigError):
            ClientConfig.from_env(env)
        assert ClientConfig.from_env({**env, "ELIDO_FORWARDER_INSECURE": "1"}).allow_insecure
