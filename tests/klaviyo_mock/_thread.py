"""The mock on a thread of its own, for synchronous tests and subprocess-driven ones."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tests.klaviyo_mock._config import DEFAULT_SCOPES, MockConfig, WindowLimit
from tests.klaviyo_mock._faults import Fault
from tests.klaviyo_mock._records import RecordedEvent, RecordedRequest
from tests.klaviyo_mock._server import KlaviyoMock

T = TypeVar("T")
_CALL_TIMEOUT_S = 30.0


class KlaviyoMockThread:
    """Runs a :class:`KlaviyoMock` on its own event loop thread; every method is thread-safe.

    with KlaviyoMockThread(MockConfig(keys=(KeySpec("pk_..."),))) as mock:
        run_forwarder(klaviyo_url=mock.base_url)
        assert len(mock.timeline("acct")) == 1
    """

    def __init__(self, config: MockConfig | None = None) -> None:
        self._config = config or MockConfig()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._mock: KlaviyoMock | None = None
        self._stop_event: asyncio.Event | None = None

    def start(self) -> None:
        """Starts the thread and the server; returns once it accepts connections."""
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="klaviyo-mock", daemon=True
        )
        self._thread.start()
        ready.result(timeout=_CALL_TIMEOUT_S)

    def stop(self) -> None:
        """Stops the server and joins the thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            stop_event = self._stop_event
            if stop_event is not None:
                self._loop.call_soon_threadsafe(stop_event.set)
            self._thread.join(timeout=_CALL_TIMEOUT_S)
        self._thread = None

    def __enter__(self) -> KlaviyoMockThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: concurrent.futures.Future[None]) -> None:
        asyncio.run(self._main(ready))

    async def _main(self, ready: concurrent.futures.Future[None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._mock = KlaviyoMock(self._config)
        try:
            await self._mock.start()
        except BaseException as exc:
            ready.set_exception(exc)
            raise
        ready.set_result(None)
        await self._stop_event.wait()
        await self._mock.stop()

    def call(self, fn: Callable[[KlaviyoMock], T]) -> T:
        """Runs ``fn(mock)`` on the mock's loop and returns its result."""
        loop, mock = self._loop, self._mock
        if loop is None or mock is None:
            raise RuntimeError("KlaviyoMockThread is not started")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(mock))
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=_CALL_TIMEOUT_S)

    @property
    def base_url(self) -> str:
        """The mock's base URL."""
        return self.call(lambda m: m.base_url)

    def add_key(
        self, key: str, account: str = "acct", scopes: Iterable[str] = DEFAULT_SCOPES
    ) -> None:
        """See :meth:`KlaviyoMock.add_key`."""
        scopes = frozenset(scopes)
        self.call(lambda m: m.add_key(key, account, scopes))

    def remove_key(self, key: str) -> None:
        """See :meth:`KlaviyoMock.remove_key`."""
        self.call(lambda m: m.remove_key(key))

    def set_limits(
        self,
        *,
        account: str | None = None,
        events: WindowLimit | None = None,
        bulk: WindowLimit | None = None,
        retry_after_header: bool | None = None,
    ) -> None:
        """See :meth:`KlaviyoMock.set_limits`."""
        self.call(
            lambda m: m.set_limits(
                account=account, events=events, bulk=bulk, retry_after_header=retry_after_header
            )
        )

    def inject(self, fault: Fault) -> None:
        """See :meth:`KlaviyoMock.inject`."""
        self.call(lambda m: m.inject(fault))

    def forget_window_usage(self) -> None:
        """See :meth:`KlaviyoMock.forget_window_usage`."""
        self.call(lambda m: m.forget_window_usage())

    def clear_faults(self) -> None:
        """See :meth:`KlaviyoMock.clear_faults`."""
        self.call(lambda m: m.clear_faults())

    def reset(self) -> None:
        """See :meth:`KlaviyoMock.reset`."""
        self.call(lambda m: m.reset())

    def timeline(self, account: str = "acct") -> list[RecordedEvent]:
        """See :meth:`KlaviyoMock.timeline`."""
        return self.call(lambda m: m.timeline(account))

    def received(self, account: str = "acct") -> list[RecordedEvent]:
        """See :meth:`KlaviyoMock.received`."""
        return self.call(lambda m: m.received(account))

    @property
    def requests(self) -> list[RecordedRequest]:
        """See :attr:`KlaviyoMock.requests`."""
        return self.call(lambda m: m.requests)

    @property
    def throttled_count(self) -> int:
        """See :attr:`KlaviyoMock.throttled_count`."""
        return self.call(lambda m: m.throttled_count)

    @property
    def status_counts(self) -> dict[int, int]:
        """See :attr:`KlaviyoMock.status_counts`."""
        return self.call(lambda m: m.status_counts)

    def stats(self) -> dict[str, Any]:
        """See :meth:`KlaviyoMock.stats`."""
        return self.call(lambda m: m.stats())
