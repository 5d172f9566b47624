"""``elido-fwd`` against the in-test forwarder: commands, output, exit codes, secrets."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import grpc
import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb
from google.protobuf import json_format

from tests.client.cli_support import (
    CONSOLE_SCRIPT,
    TtyInput,
    all_cmdlines,
    cli,
    process_env,
)
from tests.client.fake_server import ADMIN_TOKEN, INGEST_TOKEN, Failure, RunningFake

KEY = "pk_" + "Zy9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe9d"


@pytest.fixture
def admin_env(fake: RunningFake) -> dict[str, str]:
    return {"ELIDO_FORWARDER_TARGET": fake.target, "ELIDO_FORWARDER_TOKEN": ADMIN_TOKEN}


@pytest.fixture
def ingest_env(fake: RunningFake) -> dict[str, str]:
    return {"ELIDO_FORWARDER_TARGET": fake.target, "ELIDO_FORWARDER_TOKEN": INGEST_TOKEN}


def _assert_no_key(*texts: str) -> None:
    for text in texts:
        assert KEY not in text
        assert KEY[3:] not in text


async def test_register_reads_the_key_from_stdin_and_shows_only_the_fingerprint(
    fake: RunningFake, admin_env: dict[str, str]
) -> None:
    result = await cli(
        [
            "integrations",
            "register",
            "--workspace",
            "ws-1",
            "--key-file",
            "-",
            "--click-metric",
            "Clicked",
            "--email-param",
            "e",
            "--email-param",
            "mail",
            "--backfill-after",
            "1h30m",
        ],
        admin_env,
        stdin=KEY + "\n",
    )
    assert result.code == 0, result.stderr
    assert "Registered workspace ws-1" in result.stdout
    assert f"pk_…{KEY[-4:]}" in result.stdout
    assert "backfill after     1h30m" in result.stdout
    _assert_no_key(result.stdout, result.stderr)
    sent = fake.servicer.requests["RegisterIntegration"][0]
    assert sent.private_key == KEY
    assert list(sent.settings.email_parameters) == ["e", "mail"]
    assert sent.settings.backfill_after.seconds == 5400


async def test_register_from_a_file_warns_when_others_can_read_it(
    fake: RunningFake, admin_env: dict[str, str], tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    argv = ["integrations", "register", "--workspace", "ws-1", "--key-file", str(key_file)]
    loose = await cli(argv, admin_env)
    assert loose.code == 0
    assert "readable by other users" in loose.stderr
    key_file.chmod(0o600)
    tight = await cli([*argv, "--json"], admin_env)
    assert tight.code == 0
    assert tight.stderr == ""
    document = json.loads(tight.stdout)
    assert document["replaced"] is True
    assert document["integration"]["key_fingerprint"] == f"pk_…{KEY[-4:]}"
    _assert_no_key(loose.stdout, loose.stderr, tight.stdout)


@pytest.mark.parametrize(
    "argv",
    [
        ["integrations", "register", "--workspace", "ws-1", "--key", KEY],
        ["integrations", "register", "--workspace", "ws-1", f"--private-key={KEY}"],
        ["integrations", "register", "--workspace", "ws-1", "--key-file", KEY],
        ["integrations", "register", "--workspace", "ws-1", KEY],
    ],
)
async def test_a_key_on_the_command_line_is_refused_without_being_echoed(
    fake: RunningFake, admin_env: dict[str, str], argv: list[str]
) -> None:
    result = await cli(argv, admin_env)
    assert result.code == 2
    assert "refusing a Klaviyo private key on the command line" in result.stderr
    assert "--key-file -" in result.stderr
    assert "shell history" in result.stderr
    assert result.stderr.count("\n") == 1
    _assert_no_key(result.stdout, result.stderr)
    assert fake.servicer.calls["RegisterIntegration"] == 0


async def test_a_token_on_the_command_line_is_refused(
    fake: RunningFake, admin_env: dict[str, str]
) -> None:
    result = await cli(["--token", ADMIN_TOKEN, "integrations", "list"], admin_env)
    assert result.code == 2
    assert "--token-file" in result.stderr
    assert ADMIN_TOKEN not in result.stderr
    assert fake.servicer.calls["ListIntegrations"] == 0


async def test_token_file_flag_wins_over_the_environment(fake: RunningFake, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    env = {"ELIDO_FORWARDER_TARGET": fake.target, "ELIDO_FORWARDER_TOKEN": "stale"}
    result = await cli(["integrations", "list", "--token-file", str(token_file)], env)
    assert result.code == 0, result.stderr
    assert result.stdout == "No integrations.\n"


async def test_get_list_and_remove(fake: RunningFake, admin_env: dict[str, str]) -> None:
    for workspace in ("ws-b", "ws-a"):
        await cli(
            ["integrations", "register", "--workspace", workspace, "--key-file", "-"],
            admin_env,
            stdin=KEY,
        )
    listed = await cli(["integrations", "list"], admin_env)
    lines = listed.stdout.splitlines()
    assert lines[0].split() == [
        "WORKSPACE",
        "KEY",
        "STATE",
        "QUEUED",
        "DELIVERED",
        "FAILED",
        "LAST",
        "DELIVERY",
    ]
    assert [line.split()[0] for line in lines[1:]] == ["ws-a", "ws-b"]
    assert "active" in lines[1]
    as_json = json.loads((await cli(["--json", "integrations", "list"], admin_env)).stdout)
    assert [i["workspace_id"] for i in as_json["integrations"]] == ["ws-a", "ws-b"]
    assert as_json["integrations"][0]["state"] == "INTEGRATION_STATE_ACTIVE"

    got = await cli(["integrations", "get", "--workspace", "ws-a"], admin_env)
    assert got.code == 0
    assert "click metric       Elido Link Clicked" in got.stdout

    refused = await cli(["integrations", "remove", "--workspace", "ws-a"], admin_env)
    assert refused.code == 2
    assert "pass --yes" in refused.stderr
    assert "ws-a" in fake.servicer.integrations

    mistyped = await cli(
        ["integrations", "remove", "--workspace", "ws-a"], admin_env, stdin=TtyInput("ws-b\n")
    )
    assert mistyped.code == 1
    assert "Type the workspace id to confirm" in mistyped.stderr
    assert "ws-a" in fake.servicer.integrations

    confirmed = await cli(
        ["integrations", "remove", "--workspace", "ws-a"], admin_env, stdin=TtyInput("ws-a\n")
    )
    assert confirmed.code == 0, confirmed.stderr
    assert "Removed workspace ws-a" in confirmed.stdout
    assert "ws-a" not in fake.servicer.integrations

    forced = await cli(["integrations", "remove", "--workspace", "ws-b", "--yes"], admin_env)
    assert forced.code == 0
    missing = await cli(["integrations", "get", "--workspace", "ws-b"], admin_env)
    assert missing.code == 3
    assert missing.stderr == "elido-fwd: error: not found: no integration for workspace ws-b\n"


async def test_invalid_input_names_the_field_and_the_flag(
    fake: RunningFake, admin_env: dict[str, str]
) -> None:
    result = await cli(
        [
            "integrations",
            "register",
            "--workspace",
            "ws-1",
            "--key-file",
            "-",
            "--click-metric",
            "x" * 200,
        ],
        admin_env,
        stdin=KEY,
    )
    assert result.code == 4
    assert result.stderr == (
        "elido-fwd: error: invalid input: settings.click_metric_name (--click-metric): "
        "must be under 128 characters\n"
    )


async def test_empty_key_input_is_invalid_input(
    fake: RunningFake, admin_env: dict[str, str]
) -> None:
    result = await cli(
        ["integrations", "register", "--workspace", "w", "--key-file", "-"], admin_env, stdin="\n"
    )
    assert result.code == 4
    assert "holds no key" in result.stderr
    assert fake.servicer.calls["RegisterIntegration"] == 0


async def test_auth_failures_exit_5_with_a_hint(
    fake: RunningFake, ingest_env: dict[str, str]
) -> None:
    no_token = await cli(["integrations", "list"], {"ELIDO_FORWARDER_TARGET": fake.target})
    assert no_token.code == 5
    assert "no token configured" in no_token.stderr
    wrong_role = await cli(["integrations", "list"], ingest_env)
    assert wrong_role.code == 5
    assert wrong_role.stderr.startswith("elido-fwd: error: permission denied:")


async def test_unreachable_server_exits_6_with_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = await cli(
        ["--timeout", "2", "health"], {"ELIDO_FORWARDER_TARGET": f"127.0.0.1:{port}"}
    )
    assert result.code == 6
    assert result.stderr.startswith(f"elido-fwd: error: forwarder at 127.0.0.1:{port} unavail")
    assert result.stderr.count("\n") == 1


async def test_vault_outage_reports_reason_and_retry_delay(
    fake: RunningFake, admin_env: dict[str, str]
) -> None:
    fake.servicer.fail(
        "RegisterIntegration",
        *[
            Failure(
                grpc.StatusCode.UNAVAILABLE,
                "vault is sealed",
                reason="VAULT_UNAVAILABLE",
                retry_delay_s=60,
            )
        ],
    )
    result = await cli(
        ["integrations", "register", "--workspace", "w", "--key-file", "-"], admin_env, stdin=KEY
    )
    assert result.code == 6
    assert "(VAULT_UNAVAILABLE): vault is sealed; retry after 60s" in result.stderr


async def test_clicks_send_by_flags_and_from_json(
    fake: RunningFake, admin_env: dict[str, str], ingest_env: dict[str, str], tmp_path: Path
) -> None:
    await cli(
        ["integrations", "register", "--workspace", "ws-1", "--key-file", "-"], admin_env, stdin=KEY
    )
    one = await cli(
        [
            "clicks",
            "send",
            "--workspace",
            "ws-1",
            "--click-id",
            "c1",
            "--email",
            "a@example.com",
            "--url",
            "https://shop.example/p?x=1",
            "--utm",
            "utm_source=klaviyo",
            "--time",
            "2026-11-27T10:00:00Z",
        ],
        ingest_env,
    )
    assert one.code == 0, one.stderr
    assert one.stdout.splitlines()[1].split() == ["c1", "queued", "-"]
    sent = fake.servicer.clicks[("ws-1", "c1")]
    assert sent.utm_parameters["utm_source"] == "klaviyo"
    assert sent.click_time.seconds == 1_795_773_600
    again = await cli(
        [
            "--json",
            "clicks",
            "send",
            "--workspace",
            "ws-1",
            "--click-id",
            "c1",
            "--email",
            "a@example.com",
        ],
        ingest_env,
    )
    assert json.loads(again.stdout)["results"][0]["disposition"] == "CLICK_DISPOSITION_DUPLICATE"

    lines = "\n".join(
        json.dumps({"click_id": f"j{n}", "identifiers": {"email": "b@x.io"}}) for n in range(3)
    )
    many = await cli(
        ["clicks", "send", "--workspace", "ws-1", "--from-json", "-"], ingest_env, stdin=lines
    )
    assert many.code == 0, many.stderr
    assert [line.split()[0] for line in many.stdout.splitlines()[1:]] == ["j0", "j1", "j2"]
    assert fake.servicer.calls["StreamClicks"] == 1

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"click_id": "k1", "identifiers": {"emial": "typo"}}]))
    typo = await cli(["clicks", "send", "--workspace", "ws-1", "--from-json", str(bad)], ingest_env)
    assert typo.code == 4
    assert "item 0" in typo.stderr
    assert "emial" in typo.stderr


async def test_conversions_send(
    fake: RunningFake, admin_env: dict[str, str], ingest_env: dict[str, str]
) -> None:
    await cli(
        ["integrations", "register", "--workspace", "ws-1", "--key-file", "-"], admin_env, stdin=KEY
    )
    await cli(
        ["clicks", "send", "--workspace", "ws-1", "--click-id", "c1", "--email", "a@b.co"],
        ingest_env,
    )
    result = await cli(
        [
            "conversions",
            "send",
            "--workspace",
            "ws-1",
            "--conversion-id",
            "o1",
            "--click-id",
            "c1",
            "--value",
            "19.99",
            "--currency",
            "EUR",
            "--property",
            "order_id=A-1",
            "--property",
            "items=[1,2]",
        ],
        ingest_env,
    )
    assert result.code == 0, result.stderr
    assert result.stdout.splitlines()[1].split() == ["o1", "queued"]
    sent = fake.servicer.conversions[("ws-1", "o1")]
    assert sent.properties["order_id"] == "A-1"
    assert json.loads(json_format.MessageToJson(sent.properties)) == {
        "order_id": "A-1",
        "items": [1, 2],
    }
    missing_currency = await cli(
        ["conversions", "send", "--workspace", "ws-1", "--value", "5"], ingest_env
    )
    assert missing_currency.code == 4
    assert "conversion.currency (--currency)" in missing_currency.stderr


async def test_failed_list_and_replay(fake: RunningFake, admin_env: dict[str, str]) -> None:
    fake.servicer.failed["ws-1"] = [
        pb.FailedEvent(
            event_id=f"e{n}",
            workspace_id="ws-1",
            kind=pb.EVENT_KIND_CLICK,
            source_id=f"c{n}",
            attempt_count=3,
            last_error="400 invalid metric",
        )
        for n in range(3)
    ]
    listed = await cli(["failed", "list", "--workspace", "ws-1"], admin_env)
    assert listed.code == 0
    rows = listed.stdout.splitlines()
    assert rows[0].split()[:3] == ["EVENT", "ID", "KIND"]
    assert [r.split()[0] for r in rows[1:]] == ["e0", "e1", "e2"]
    assert "400 invalid metric" in rows[1]
    usage = await cli(["failed", "replay", "--workspace", "ws-1"], admin_env)
    assert usage.code == 2
    one = await cli(["failed", "replay", "--workspace", "ws-1", "--event-id", "e1"], admin_env)
    assert one.stdout == "Replayed 1 events.\n"
    unknown = await cli(["failed", "replay", "--workspace", "ws-1", "--event-id", "zz"], admin_env)
    assert unknown.code == 4
    assert "event_ids[0] (--event-id): no such failed event" in unknown.stderr
    rest = await cli(["--json", "failed", "replay", "--workspace", "ws-1", "--all"], admin_env)
    assert json.loads(rest.stdout) == {"replayed_count": "2", "dry_run": False}


async def test_health_and_rewrap(fake: RunningFake, admin_env: dict[str, str]) -> None:
    healthy = await cli(["health"], admin_env)
    assert (healthy.code, healthy.stdout) == (0, "SERVING\n")
    await fake.health.set("", 2)  # NOT_SERVING
    sick = await cli(["health", "--json"], admin_env)
    assert sick.code == 6
    assert json.loads(sick.stdout) == {"status": "NOT_SERVING"}
    rewrap = await cli(["integrations", "rewrap"], admin_env)
    assert rewrap.code == 0
    assert rewrap.stdout.startswith("Rewrapped 0 keys")


async def test_usage_errors_exit_2(admin_env: dict[str, str]) -> None:
    result = await cli(["integrations", "register", "--workspace", "w"], admin_env)
    assert result.code == 2
    assert "--key-file" in result.stderr


async def test_console_script_keeps_the_key_out_of_argv_output_and_logs(
    fake: RunningFake, admin_env: dict[str, str]
) -> None:
    env = process_env({**admin_env, "ELIDO_FORWARDER_DEBUG": "1"})
    process = await asyncio.create_subprocess_exec(
        str(CONSOLE_SCRIPT),
        "integrations",
        "register",
        "--workspace",
        "ws-1",
        "--key-file",
        "-",
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # While the process waits for its key, nothing any user can see names it.
    await asyncio.sleep(0.2)
    assert not [c for c in all_cmdlines() if KEY.encode() in c]
    stdout, stderr = await process.communicate(KEY.encode() + b"\n")
    assert process.returncode == 0, stderr
    assert b"Registered workspace ws-1" in stdout
    _assert_no_key(stdout.decode(), stderr.decode())
