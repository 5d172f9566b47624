from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from client import ClientConfig, RetryPolicy
from tests.client.fake_server import ADMIN_TOKEN, INGEST_TOKEN, RunningFake, start_fake

# Retries in tests wait milliseconds, not the production defaults' tenths of seconds.
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture
async def fake() -> AsyncIterator[RunningFake]:
    running = await start_fake()
    yield running
    await running.server.stop(None)


@pytest.fixture
def admin_config(fake: RunningFake) -> ClientConfig:
    return ClientConfig(
        target=fake.target, token=ADMIN_TOKEN, default_timeout_s=5.0, retry=FAST_RETRY
    )


@pytest.fixture
def ingest_config(fake: RunningFake) -> ClientConfig:
    return ClientConfig(
        target=fake.target, token=INGEST_TOKEN, default_timeout_s=5.0, retry=FAST_RETRY
    )
