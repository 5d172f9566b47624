"""README.md's quickstart, executed against `make run`'s stack and the Klaviyo mock."""

from __future__ import annotations

import re

import pytest

from server.devstack._openbao import port_is_free
from tests.docs._devstack import wait_until
from tests.docs._markdown import Block, shell_blocks
from tests.docs.conftest import DocsEnvironment, repo_file

README = repo_file("README.md")
BLOCKS = shell_blocks(README)
RUN = [b for b in BLOCKS if b.mode == "run"]


def _provided(name: str) -> Block:
    (block,) = [b for b in BLOCKS if b.mode == "provided" and b.argument == name]
    return block


def test_mock_block_names_a_key_the_mock_then_accepts(docs_env: DocsEnvironment) -> None:
    # The reader starts the mock with this command; the test's mock gets the same key.
    text = _provided("klaviyo-mock").body
    assert "python -m tests.klaviyo_mock --port 8899 --key " in text
    key = re.search(r"--key (pk_\w+)", text)
    assert key is not None
    docs_env.mock.add_key(key.group(1), "acct")
    # And `make run` is pointed at that mock, which is what the fixture does.
    assert "KLAVIYO_BASE_URL=http://127.0.0.1:8899 make run" in _provided("make-run").body


def test_make_run_prints_dev_tokens_and_a_grpcurl_command_that_works(
    docs_env: DocsEnvironment,
) -> None:
    output = docs_env.stack.output()
    admin = docs_env.stack.token("admin")
    assert f"admin:  {admin}" in output
    assert "ready (Ctrl-C stops the forwarder, then OpenBao)" in output
    hint = re.search(r"devstack:\s+(\S*grpcurl .* list)$", output, re.MULTILINE)
    assert hint is not None, output
    # The reader pastes the printed command as it is.
    result = docs_env.terminal.run(hint.group(1))
    assert result.exit_code == 0, result.output
    assert "elido.forwarder.v1.ForwarderService" in result.output


def _hook(docs_env: DocsEnvironment, hook: str) -> None:
    name, _, argument = hook.partition(":")
    if name == "wait-delivered":
        wanted = int(argument)
        wait_until(
            lambda: len(docs_env.mock.timeline("acct")) >= wanted,
            f"{wanted} events on the mock's timeline",
        )
    else:
        raise AssertionError(f"README.md uses an unknown docs-test hook {hook!r}")


@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_readme_block(docs_env: DocsEnvironment, block: Block) -> None:
    for hook in block.hooks:
        _hook(docs_env, hook)
    docs_env.terminal.run_block(block)


def test_the_quickstart_click_and_conversion_reached_the_timeline(
    docs_env: DocsEnvironment,
) -> None:
    events = {e.unique_id: e for e in docs_env.mock.timeline("acct")}
    assert events["demo-click-1"].metric == "Elido Link Clicked"
    assert events["demo-click-1"].profile == {"email": "jane@example.com"}
    assert events["order-1"].metric == "Elido Conversion"
    assert events["order-1"].value == pytest.approx(19.99)
    assert events["grpc-click-1"].backfill is True


def test_ctrl_c_stops_the_forwarder_then_openbao(docs_env: DocsEnvironment) -> None:
    stack = docs_env.stack
    assert stack.ctrl_c() == 0, stack.output()
    output = stack.output()
    assert output.index("stopping the forwarder") < output.index("OpenBao stopped")
    for address in (stack.target, stack.vault):
        host, port = address.rsplit(":", 1)
        assert port_is_free(host, int(port)), f"{address} still in use"
