"""Fixtures of the docs tests: `make run`'s stack on free ports, the Klaviyo mock, a shell."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs._devstack import DevStack
from tests.docs._terminal import Substitutions, Terminal
from tests.klaviyo_mock import KlaviyoMockThread


@dataclass
class DocsEnvironment:
    """What a documented terminal session talks to."""

    stack: DevStack
    mock: KlaviyoMockThread
    terminal: Terminal


@pytest.fixture(scope="module")
def docs_env(
    tmp_path_factory: pytest.TempPathFactory, klaviyo_mock_thread_server: KlaviyoMockThread
) -> Iterator[DocsEnvironment]:
    """A devstack delivering to the session's Klaviyo mock, and a fresh shell in the repo.

    One per test module: the module's tests are the document's steps, in order.
    """
    mock = klaviyo_mock_thread_server
    mock.reset()
    root = tmp_path_factory.mktemp("docs")
    stack = DevStack(root / "var", mock.base_url)
    terminal: Terminal | None = None
    try:
        stack.wait_serving()
        substitutions = Substitutions(
            forwarder=stack.target,
            vault=stack.vault,
            mock=mock.base_url.removeprefix("http://").rstrip("/"),
            metrics=stack.metrics,
            data_dir=stack.data_dir,
        )
        terminal = Terminal(root / "terminal", substitutions)
        yield DocsEnvironment(stack, mock, terminal)
    finally:
        if terminal is not None:
            terminal.close()
        stack.ctrl_c()
        mock.reset()


def repo_file(name: str) -> Path:
    return Path(__file__).resolve().parents[2] / name
