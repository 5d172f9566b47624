"""Fixtures for the Klaviyo client, payload, rate-limit and mock tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from server.delivery._klaviyo import KlaviyoClient, KlaviyoConfig
from tests.klaviyo_mock import KlaviyoMock

# klaviyo_mock and friends come from tests.support.klaviyo, a plugin of the root conftest.


@pytest_asyncio.fixture(loop_scope="session")
async def client(klaviyo_mock: KlaviyoMock) -> AsyncIterator[KlaviyoClient]:
    """A client pointed at the mock, with a short timeout so hang tests stay fast."""
    client = KlaviyoClient(KlaviyoConfig(base_url=klaviyo_mock.base_url, timeout_s=1.0))
    yield client
    await client.aclose()
