"""Pytest fixtures for the Klaviyo mock.

Use them from a conftest.py (or a test module) by importing them::

    from tests.support.klaviyo import klaviyo_mock, klaviyo_mock_server  # noqa: F401

or ``pytest_plugins = ["tests.support.klaviyo"]`` in the root conftest.py.

- ``klaviyo_mock`` (async tests): a :class:`KlaviyoMock` on the session's event loop,
  started once per session and reset before each test; ``TEST_KEY`` is valid for account
  ``TEST_ACCOUNT``; limits are Klaviyo's documented ones (change them with ``set_limits``).
- ``klaviyo_mock_thread`` (sync tests, forwarder in a subprocess): the same, on its own
  thread and loop (:class:`KlaviyoMockThread`); its ``base_url`` works from any process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from server.delivery._klaviyo import PROBE_BODY
from tests.klaviyo_mock import KlaviyoMock, KlaviyoMockThread, MockConfig, RecordedRequest

# The form of a Klaviyo private key (pk_ + 34 alphanumerics); valid only at the mock.
TEST_KEY = "pk_" + "T3st" * 8 + "k3"
TEST_ACCOUNT = "acct"


def is_key_check(request: RecordedRequest) -> bool:
    """True for the forwarder's key check (a Create Event Klaviyo must refuse), which every
    registration sends before anything is delivered."""
    if request.path.rstrip("/") != "/api/events":
        return False
    try:
        return bool(request.json == PROBE_BODY)
    except ValueError:
        return False


def deliveries(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    """The requests that carried events (key checks left out)."""
    return [r for r in requests if not is_key_check(r)]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def klaviyo_mock_server() -> AsyncIterator[KlaviyoMock]:
    """One mock for the session, on the session's event loop."""
    mock = KlaviyoMock(MockConfig())
    await mock.start()
    yield mock
    await mock.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def klaviyo_mock(klaviyo_mock_server: KlaviyoMock) -> AsyncIterator[KlaviyoMock]:
    """The session's mock, reset, with ``TEST_KEY`` valid for ``TEST_ACCOUNT``."""
    klaviyo_mock_server.reset()
    klaviyo_mock_server.add_key(TEST_KEY, TEST_ACCOUNT)
    yield klaviyo_mock_server
    klaviyo_mock_server.reset()


@pytest.fixture(scope="session")
def klaviyo_mock_thread_server() -> Iterator[KlaviyoMockThread]:
    """One threaded mock for the session."""
    with KlaviyoMockThread(MockConfig()) as mock:
        yield mock


@pytest.fixture
def klaviyo_mock_thread(
    klaviyo_mock_thread_server: KlaviyoMockThread,
) -> Iterator[KlaviyoMockThread]:
    """The session's threaded mock, reset, with ``TEST_KEY`` valid for ``TEST_ACCOUNT``."""
    klaviyo_mock_thread_server.reset()
    klaviyo_mock_thread_server.add_key(TEST_KEY, TEST_ACCOUNT)
    yield klaviyo_mock_thread_server
    klaviyo_mock_thread_server.reset()
