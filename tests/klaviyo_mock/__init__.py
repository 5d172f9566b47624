"""A Klaviyo stand-in that holds the forwarder to the documented contract (CONTRACT.md).

In-process (async tests)::

    async with KlaviyoMock(MockConfig(keys=(KeySpec("pk_..."),))) as mock:
        ...  # point the client at mock.base_url; assert on mock.timeline("acct")

On its own thread (sync tests, forwarder in a subprocess): :class:`KlaviyoMockThread`.
Standalone for demos: ``python -m tests.klaviyo_mock --port 8899 --key pk_...``, driven through
the JSON admin API under ``/__mock__/`` (see ``_admin.py``).

Rate limits are sliding windows per account and endpoint (see ``_ratelimit.py``).
"""

from tests.klaviyo_mock._config import (
    DEFAULT_SCOPES,
    EVENTS_WRITE,
    PROFILES_READ,
    PROFILES_WRITE,
    AccountLimits,
    KeySpec,
    MockConfig,
    WindowLimit,
)
from tests.klaviyo_mock._faults import Fault, FaultKind
from tests.klaviyo_mock._records import RecordedEvent, RecordedRequest
from tests.klaviyo_mock._server import KlaviyoMock
from tests.klaviyo_mock._thread import KlaviyoMockThread

__all__ = [
    "DEFAULT_SCOPES",
    "EVENTS_WRITE",
    "PROFILES_READ",
    "PROFILES_WRITE",
    "AccountLimits",
    "Fault",
    "FaultKind",
    "KeySpec",
    "KlaviyoMock",
    "KlaviyoMockThread",
    "MockConfig",
    "RecordedEvent",
    "RecordedRequest",
    "WindowLimit",
]
