from __future__ import annotations

import secrets

import pytest

from tests.support.forwarder import ForwarderProcess


def new_key() -> str:
    return "pk_" + secrets.token_hex(17)


@pytest.fixture
def forwarder(forwarder_factory) -> ForwarderProcess:  # type: ignore[no-untyped-def]
    return forwarder_factory()
