"""docs/operator.md's examples, executed against `make run`'s stack and the Klaviyo mock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from elido.forwarder.v1 import forwarder_pb2 as pb

from tests.docs._devstack import wait_until
from tests.docs._markdown import Block, shell_blocks
from tests.docs.conftest import DocsEnvironment, repo_file
from tests.klaviyo_mock._faults import Fault, FaultKind

GUIDE = repo_file("docs/operator.md")
RUN = [b for b in shell_blocks(GUIDE) if b.mode == "run"]
# The guide's made-up keys: the first is registered at the start, the second replaces it
# after Klaviyo "revokes" the first.
FIRST_KEY = "pk_AcmeAcmeAcmeAcmeAcmeAcmeAcmeAcme01"
SECOND_KEY = "pk_AcmeAcmeAcmeAcmeAcmeAcmeAcmeAcme02"


def test_the_guide_uses_the_keys_the_mock_knows(docs_env: DocsEnvironment) -> None:
    text = GUIDE.read_text()
    assert FIRST_KEY in text
    assert SECOND_KEY in text
    docs_env.mock.add_key(FIRST_KEY, "acct")


def _counts(docs_env: DocsEnvironment) -> pb.DeliveryStatus:
    return docs_env.stack.integration("acme").delivery


def _revoke_first_key(docs_env: DocsEnvironment) -> None:
    stack, mock = docs_env.stack, docs_env.mock
    wait_until(lambda: _counts(docs_env).queued_count == 0, "acme's outbox to drain")
    mock.remove_key(FIRST_KEY)
    mock.add_key(SECOND_KEY, "acct")
    click = pb.Click(
        click_id="held-1",
        workspace_id="acme",
        identifiers=pb.ProfileIdentifiers(email="jane@example.com"),
    )
    click.click_time.GetCurrentTime()
    answer = stack.stub().ForwardClick(
        pb.ForwardClickRequest(click=click),
        timeout=5,
        metadata=(("authorization", f"Bearer {stack.token('ingest')}"),),
    )
    assert answer.disposition == pb.CLICK_DISPOSITION_QUEUED
    wait_until(
        lambda: stack.integration("acme").state == pb.INTEGRATION_STATE_KEY_REJECTED,
        "Klaviyo's 401 to reach the integration's state",
    )


def _hook(docs_env: DocsEnvironment, hook: str) -> None:
    name, _, argument = hook.partition(":")
    if name == "klaviyo-refuses-next-event":
        docs_env.mock.inject(Fault(kind=FaultKind.STATUS, status=400, count=1, endpoint="events"))
    elif name == "wait-failed":
        workspace, wanted = argument.split(":")
        wait_until(
            lambda: docs_env.stack.integration(workspace).delivery.failed_count >= int(wanted),
            f"{wanted} failed events of {workspace}",
        )
    elif name == "klaviyo-revokes-acme-key":
        _revoke_first_key(docs_env)
    else:
        raise AssertionError(f"docs/operator.md uses an unknown docs-test hook {hook!r}")


@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_operator_block(docs_env: DocsEnvironment, block: Block) -> None:
    for hook in block.hooks:
        _hook(docs_env, hook)
    docs_env.terminal.run_block(block)


def test_held_events_were_delivered_with_the_new_key(docs_env: DocsEnvironment) -> None:
    wait_until(
        lambda: any(e.unique_id == "held-1" for e in docs_env.mock.timeline("acct")),
        "the held click to reach Klaviyo",
    )
    assert docs_env.stack.integration("acme").state == pb.INTEGRATION_STATE_ACTIVE


def test_the_documented_token_recipe_makes_a_working_token_file(
    docs_env: DocsEnvironment, forwarder_factory: Any
) -> None:
    # The token block above wrote these into the stack's var/; a forwarder configured with
    # the file accepts the token in the role the entry names, and only that role.
    tokens_file = docs_env.stack.data_dir / "ops-tokens.json"
    token_file = docs_env.stack.data_dir / "edge-sidecar.token"
    forwarder = forwarder_factory(env={"FORWARDER_TOKENS_FILE": str(tokens_file)})

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "client.cli",
                "--target",
                forwarder.target,
                "--token-file",
                str(token_file),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=Path(__file__).resolve().parents[2],
            check=False,
        )

    sent = cli("clicks", "send", "--workspace", "nobody", "--email", "jane@example.com")
    assert sent.returncode == 0, sent.stderr
    assert "no integration" in sent.stdout
    denied = cli("integrations", "list")
    assert denied.returncode == 5
    assert "'edge-sidecar' lacks the 'admin' role" in denied.stderr
