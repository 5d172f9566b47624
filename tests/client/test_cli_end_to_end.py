"""``elido-fwd`` as a real process against the real forwarder, OpenBao and the Klaviyo mock.

The key travels only through stdin: it must not appear in any process's command line, in
the CLI's output, or in the server's logs.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.client.cli_support import CONSOLE_SCRIPT, all_cmdlines, process_env
from tests.klaviyo_mock import KlaviyoMockThread
from tests.support.forwarder import ForwarderProcess
from tests.support.openbao import new_workspace_id


def _key() -> str:
    return "pk_" + secrets.token_hex(17)


def _fwd(env: dict[str, str], *argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_register_send_inspect_remove_with_the_key_kept_secret(
    forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread, tmp_path: Path
) -> None:
    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    key, workspace = _key(), new_workspace_id()
    klaviyo_mock_thread.add_key(key, "acct-cli")
    admin_token_file = tmp_path / "admin-token"
    admin_token_file.write_text(fwd.admin_token)
    admin = process_env(
        {"ELIDO_FORWARDER_TARGET": fwd.target, "ELIDO_FORWARDER_TOKEN_FILE": str(admin_token_file)}
    )
    ingest = process_env(
        {"ELIDO_FORWARDER_TARGET": fwd.target, "ELIDO_FORWARDER_TOKEN": fwd.ingest_token}
    )
    outputs: list[str] = []

    process = subprocess.Popen(
        [
            str(CONSOLE_SCRIPT),
            "integrations",
            "register",
            "--workspace",
            workspace,
            "--key-file",
            "-",
            "--click-metric",
            "Clicked via CLI",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=admin,
    )
    time.sleep(0.2)  # Running, waiting for its stdin: what `ps` would show now.
    assert not [c for c in all_cmdlines() if key.encode() in c]
    stdout, stderr = process.communicate(key + "\n", timeout=60)
    outputs += [stdout, stderr]
    assert process.returncode == 0, stderr
    assert f"Registered workspace {workspace}" in stdout
    assert f"pk_…{key[-4:]}" in stdout

    got = _fwd(admin, "--json", "integrations", "get", "--workspace", workspace)
    outputs += [got.stdout, got.stderr]
    assert got.returncode == 0, got.stderr
    integration = json.loads(got.stdout)
    assert integration["state"] == "INTEGRATION_STATE_ACTIVE"
    assert integration["settings"]["click_metric_name"] == "Clicked via CLI"

    listed = _fwd(admin, "integrations", "list")
    outputs += [listed.stdout, listed.stderr]
    assert workspace in listed.stdout

    sent = _fwd(
        ingest,
        "clicks",
        "send",
        "--workspace",
        workspace,
        "--click-id",
        "cli-c1",
        "--email",
        "jane@example.com",
        "--url",
        "https://shop.example/?utm_source=kl",
    )
    outputs += [sent.stdout, sent.stderr]
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.splitlines()[1].split() == ["cli-c1", "queued", "-"]
    _wait_for(lambda: len(klaviyo_mock_thread.timeline("acct-cli")) == 1, "the click at Klaviyo")
    event = klaviyo_mock_thread.timeline("acct-cli")[0]
    assert (event.metric, event.unique_id) == ("Clicked via CLI", "cli-c1")
    assert event.profile == {"email": "jane@example.com"}

    refused = _fwd(admin, "integrations", "remove", "--workspace", workspace)
    assert refused.returncode == 2
    removed = _fwd(admin, "integrations", "remove", "--workspace", workspace, "--yes")
    outputs += [removed.stdout, removed.stderr]
    assert removed.returncode == 0, removed.stderr
    gone = _fwd(admin, "integrations", "get", "--workspace", workspace)
    assert gone.returncode == 3
    assert gone.stderr.startswith("elido-fwd: error: not found:")

    for text in [*outputs, fwd.logs()]:
        assert key not in text
        assert key[3:] not in text


def test_failures_have_one_line_errors_and_exit_codes(
    forwarder_factory: Any, tmp_path: Path
) -> None:
    fwd: ForwarderProcess = forwarder_factory()
    base = process_env({"ELIDO_FORWARDER_TARGET": fwd.target})
    bad_token = _fwd({**base, "ELIDO_FORWARDER_TOKEN": "not-a-token"}, "integrations", "list")
    assert bad_token.returncode == 5
    assert bad_token.stderr.startswith("elido-fwd: error: authentication failed:")
    admin = {**base, "ELIDO_FORWARDER_TOKEN": fwd.admin_token}
    bad_key = _fwd(
        admin,
        "integrations",
        "register",
        "--workspace",
        new_workspace_id(),
        "--key-file",
        "-",
        stdin="sk_not_a_klaviyo_key\n",
    )
    assert bad_key.returncode == 4
    assert "private_key (--key-file)" in bad_key.stderr
    for result in (bad_token, bad_key):
        assert result.stderr.count("\n") == 1
    healthy = _fwd(base, "health")
    assert (healthy.returncode, healthy.stdout) == (0, "SERVING\n")
    fwd.stop()
    down = _fwd({**admin, "ELIDO_FORWARDER_TIMEOUT": "3"}, "integrations", "list")
    assert down.returncode == 6
    assert down.stderr.count("\n") == 1


def test_key_check_unverified_state_and_verify_with_a_test_event(
    forwarder_factory: Any, klaviyo_mock_thread: KlaviyoMockThread
) -> None:
    from tests.klaviyo_mock import Fault, FaultKind

    fwd: ForwarderProcess = forwarder_factory(klaviyo_url=klaviyo_mock_thread.base_url)
    admin = process_env(
        {"ELIDO_FORWARDER_TARGET": fwd.target, "ELIDO_FORWARDER_TOKEN": fwd.admin_token}
    )
    unknown, key, workspace = _key(), _key(), new_workspace_id()
    outputs: list[str] = []

    def register(secret: str) -> subprocess.CompletedProcess[str]:
        result = _fwd(
            admin,
            "integrations",
            "register",
            "--workspace",
            workspace,
            "--key-file",
            "-",
            stdin=secret + "\n",
        )
        outputs.extend((result.stdout, result.stderr))
        return result

    refused = register(unknown)
    assert refused.returncode == 4, refused.stderr
    assert "private_key (--key-file): Klaviyo does not know this key (HTTP 401)" in refused.stderr
    assert refused.stderr.count("\n") == 1

    klaviyo_mock_thread.add_key(key, "acct-cli-verify")
    klaviyo_mock_thread.inject(Fault(FaultKind.STATUS, status=503, count=1))
    stored = register(key)
    assert stored.returncode == 0, stored.stderr
    assert "unverified (Klaviyo could not confirm the key" in stored.stdout
    listed = _fwd(admin, "integrations", "list")
    outputs.append(listed.stdout)
    assert f"{workspace}  pk_…{key[-4:]}  unverified" in listed.stdout

    checked = _fwd(
        admin,
        "integrations",
        "verify",
        "--workspace",
        workspace,
        "--test-event-email",
        "owner@example.com",
    )
    outputs.extend((checked.stdout, checked.stderr))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith("Key check: valid: Klaviyo accepts the key")
    assert 'Test event sent (metric "Elido Test Event", unique_id elido-test-' in checked.stdout
    assert "state              active" in checked.stdout
    _wait_for(
        lambda: (
            [e.metric for e in klaviyo_mock_thread.timeline("acct-cli-verify")]
            == ["Elido Test Event"]
        ),
        "the test event on the timeline",
    )
    assert klaviyo_mock_thread.timeline("acct-cli-verify")[0].profile == {
        "email": "owner@example.com"
    }

    # The owner removes events:write in Klaviyo: the re-check says so and exits 1.
    klaviyo_mock_thread.add_key(key, "acct-cli-verify", scopes={"profiles:write"})
    narrowed = _fwd(admin, "--json", "integrations", "verify", "--workspace", workspace)
    outputs.extend((narrowed.stdout, narrowed.stderr))
    assert narrowed.returncode == 1, narrowed.stderr
    answer = json.loads(narrowed.stdout)
    assert answer["verdict"] == "KEY_CHECK_VERDICT_SCOPE_MISSING"
    assert answer["integration"]["state"] == "INTEGRATION_STATE_KEY_REJECTED"

    bad_profile = _fwd(
        admin, "integrations", "verify", "--workspace", workspace, "--test-event-phone", "12"
    )
    outputs.extend((bad_profile.stdout, bad_profile.stderr))
    assert bad_profile.returncode == 4
    assert "test_event_profile.phone_number" in bad_profile.stderr

    fwd.stop()
    for secret in (unknown, key):
        assert not [text for text in outputs if secret in text]
        assert secret not in fwd.logs()
