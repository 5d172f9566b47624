from pathlib import Path

import pytest

from ingest_sidecar import ConfigError, FullPolicy, load_config


def test_toml_with_environment_overrides(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    path = tmp_path / "sidecar.toml"
    path.write_text(f"""
shutdown_grace_s = 2.5
[spool]
directory = "{tmp_path / "spool"}"
full_policy = "drop_oldest"
[stream]
target = "fwd:50051"
token_file = "{tmp_path / "token"}"
batch_max_clicks = 200
[extract]
email_parameters = ["e"]
[tail]
path = "/var/log/x.json"
[tail.fields]
workspace_id = "ws"
""")
    config = load_config(
        path,
        env={
            "ELIDO_SIDECAR_STREAM_BATCH_MAX_CLICKS": "300",
            "ELIDO_SIDECAR_EXTRACT_FORWARD_ANONYMOUS": "true",
            "ELIDO_SIDECAR_EXTRACT_PHONE_PARAMETERS": "tel, mobile",
            "ELIDO_SIDECAR_TAIL_FIELDS": "workspace_id=w,click_id=id",
        },
    )
    assert config.shutdown_grace_s == 2.5
    assert config.spool.full_policy is FullPolicy.DROP_OLDEST
    assert config.stream.batch_max_clicks == 300
    assert config.stream.token.reveal() == "s3cret-token"
    assert "s3cret" not in repr(config)
    assert config.extract.email_parameters == ("e",)
    assert config.extract.phone_parameters == ("tel", "mobile")
    assert config.extract.forward_anonymous is True
    assert config.tail.fields == {"workspace_id": "w", "click_id": "id"}
    assert config.tail_checkpoint_path == tmp_path / "spool" / "tail.checkpoint"


def test_token_from_environment_and_never_from_the_file(tmp_path: Path) -> None:
    config = load_config(None, env={"ELIDO_SIDECAR_STREAM_TOKEN": "envtok"})
    assert config.stream.token.reveal() == "envtok"
    path = tmp_path / "c.toml"
    path.write_text('[stream]\ntoken = "plain"\n')
    with pytest.raises(ConfigError, match="token_file"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[spool]\nsegmnt_bytes = 1\n", {}, "unknown keys"),
        ("[nope]\n", {}, "unknown tables"),
        ("[stream]\nbatch_max_clicks = 5000\n", {}, "1-1000"),
        ("", {"ELIDO_SIDECAR_SPOOL_MAX_BYTES": "lots"}, "spool.max_bytes"),
        ("", {"ELIDO_SIDECAR_SPOOL_FULL_POLICY": "explode"}, "spool.full_policy"),
        ("[spool]\nsegment_bytes = 1048576\nmax_bytes = 1048576\n", {}, "twice"),
        ("not toml [", {}, "cannot read"),
    ],
)
def test_invalid_configuration_is_refused(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, env=env)
