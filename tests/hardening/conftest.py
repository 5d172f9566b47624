from __future__ import annotations

import pytest

from tests.support.forwarder import ForwarderProcess


@pytest.fixture
def forwarder(forwarder_factory) -> ForwarderProcess:  # type: ignore[no-untyped-def]
    return forwarder_factory()
