"""The Klaviyo mock: an aiohttp server that enforces the documented contract.

A request goes through, in order: recording; injected faults; authentication (401/403);
the account's rate-limit windows (429); headers (revision 400, Accept 406, Content-Type 415);
size, JSON and body checks (400); then its events are recorded, deduplicated like Klaviyo,
and it is answered 202. State is touched only from the mock's event loop; drive it from
another thread through :class:`tests.klaviyo_mock.KlaviyoMockThread`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

import structlog
from aiohttp import web

from tests.klaviyo_mock._config import (
    DEFAULT_SCOPES,
    EVENTS_WRITE,
    PROFILES_READ,
    AccountLimits,
    KeySpec,
    MockConfig,
    WindowLimit,
)
from tests.klaviyo_mock._errors import ApiError, invalid
from tests.klaviyo_mock._faults import Fault, FaultBook, FaultKind
from tests.klaviyo_mock._ratelimit import SlidingWindows
from tests.klaviyo_mock._records import RecordedEvent, RecordedRequest
from tests.klaviyo_mock._validation import (
    MAX_PAYLOAD_BYTES,
    EventIn,
    parse_bulk_job,
    parse_event_create,
)

log = structlog.get_logger(__name__)

JSON_API: Final = "application/vnd.api+json"
_REVISION = re.compile(r"\d{4}-\d{2}-\d{2}(\.[A-Za-z0-9_]+)?")
_ACCEPTABLE = frozenset({JSON_API, "application/json", "application/*", "*/*"})
_AUTH_PREFIX: Final = "Klaviyo-API-Key "
# Bigger than Klaviyo's 5 MB so that the mock, not aiohttp, answers oversized bodies.
_CLIENT_MAX_SIZE: Final = 32 * 1024 * 1024
_HANG_DEFAULT_S: Final = 3600.0


def redact(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers with the Authorization key shortened to a fingerprint (for output, logs)."""
    out = {}
    for name, value in headers:
        if name.lower() == "authorization":
            key = value.removeprefix(_AUTH_PREFIX)
            value = f"{_AUTH_PREFIX}{key[:3]}…{key[-4:]}" if len(key) >= 8 else "…"
        out[name] = value
    return out


class KlaviyoMock:
    """An in-process Klaviyo stand-in (see the module docstring for what it checks)."""

    def __init__(self, config: MockConfig | None = None) -> None:
        self._config = config or MockConfig()
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._stopping = asyncio.Event()
        self._seq = itertools.count(1)
        self._reset_state()

    def _reset_state(self) -> None:
        self._keys: dict[str, KeySpec] = {k.key: k for k in self._config.keys}
        self._default_limits = self._config.limits
        self._account_limits: dict[str, AccountLimits] = {}
        self._windows: dict[tuple[str, str], SlidingWindows] = {}
        self._faults = FaultBook()
        self._requests: deque[RecordedRequest] = deque(maxlen=self._config.max_recorded_requests)
        self._timeline: dict[str, list[RecordedEvent]] = {}
        self._received: dict[str, list[RecordedEvent]] = {}
        self._seen: set[tuple[str, str, str, str]] = set()
        self._timeline_counts: dict[str, int] = {}
        self._received_counts: dict[str, int] = {}
        self._throttled = 0
        self._status_counts: dict[int, int] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts serving on the configured host and port (0 = a free port)."""
        self._stopping = asyncio.Event()
        app = web.Application(client_max_size=_CLIENT_MAX_SIZE)
        for path, endpoint in (("/api/events", "events"), ("/api/event-bulk-create-jobs", "bulk")):
            for variant in (path, path + "/"):
                app.router.add_post(variant, self._make_handler(endpoint))
        for variant in ("/api/profiles", "/api/profiles/"):
            app.router.add_get(variant, self._make_handler("profiles"))
        if self._config.admin_api:
            from tests.klaviyo_mock._admin import add_admin_routes

            add_admin_routes(app, self)
        # No access log: at thousands of requests/s it would dominate the mock's CPU.
        # Short shutdown: tests stop the mock often, and hung requests must not hold it up.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.port, backlog=1024)
        await site.start()
        server = site._server  # aiohttp exposes no public way to read the bound port.
        assert isinstance(server, asyncio.base_events.Server)
        self._port = server.sockets[0].getsockname()[1]
        log.info("klaviyo_mock.started", url=self.base_url)

    async def stop(self) -> None:
        """Stops serving; hung requests are released and their connections dropped."""
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KlaviyoMock:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The bound port (after start())."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` — pass it as the client's base URL."""
        return f"http://{self._config.host}:{self._port}"

    # -- configuration ----------------------------------------------------------------------

    def add_key(
        self, key: str, account: str = "acct", scopes: Iterable[str] = DEFAULT_SCOPES
    ) -> None:
        """Makes ``key`` valid, belonging to ``account`` with ``scopes``."""
        self._keys[key] = KeySpec(key, account, frozenset(scopes))

    def remove_key(self, key: str) -> None:
        """Makes ``key`` unknown (401), e.g. a key revoked in Klaviyo."""
        self._keys.pop(key, None)

    def set_limits(
        self,
        *,
        account: str | None = None,
        events: WindowLimit | None = None,
        bulk: WindowLimit | None = None,
        retry_after_header: bool | None = None,
    ) -> None:
        """Changes the limits of ``account``, or the default for every account (None)."""
        current = (
            self._default_limits
            if account is None
            else self._account_limits.get(account, self._default_limits)
        )
        changed = replace(
            current,
            events=events or current.events,
            bulk=bulk or current.bulk,
            retry_after_header=(
                current.retry_after_header if retry_after_header is None else retry_after_header
            ),
        )
        if account is None:
            self._default_limits = changed
        else:
            self._account_limits[account] = changed

    def limits(self, account: str) -> AccountLimits:
        """The limits in force for ``account``."""
        return self._account_limits.get(account, self._default_limits)

    def inject(self, fault: Fault) -> None:
        """Arms a fault (see :class:`Fault`)."""
        self._faults.add(fault, time.monotonic())

    def forget_window_usage(self) -> None:
        """Empties every account's rate-limit windows (the requests seen so far no longer
        count against the limits), e.g. after a test's set-up requests."""
        self._windows.clear()

    def clear_faults(self) -> None:
        """Disarms every fault."""
        self._faults.clear()

    def reset(self) -> None:
        """Back to the configured state: keys, limits, no faults, nothing recorded."""
        self._reset_state()

    # -- observations -----------------------------------------------------------------------

    def timeline(self, account: str = "acct") -> list[RecordedEvent]:
        """The account's events as Klaviyo would keep them: first processed wins per
        (profile, metric, unique_id)."""
        return list(self._timeline.get(account, ()))

    def received(self, account: str = "acct") -> list[RecordedEvent]:
        """Every accepted event of the account, duplicates included (what we sent)."""
        return list(self._received.get(account, ()))

    @property
    def requests(self) -> list[RecordedRequest]:
        """Recorded requests, oldest first (bounded by ``max_recorded_requests``)."""
        return list(self._requests)

    @property
    def throttled_count(self) -> int:
        """How many 429s the mock answered since the last reset."""
        return self._throttled

    @property
    def status_counts(self) -> dict[int, int]:
        """Answers by status code since the last reset."""
        return dict(self._status_counts)

    def stats(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "throttled_count": self._throttled,
            "status_counts": {str(k): v for k, v in sorted(self._status_counts.items())},
            "requests_recorded": len(self._requests),
            "faults_armed": len(self._faults),
            "accounts": {
                account: {
                    "timeline": self._timeline_counts.get(account, 0),
                    "received": self._received_counts.get(account, 0),
                }
                for account in sorted(
                    {*self._timeline_counts, *(k.account for k in self._keys.values())}
                )
            },
        }

    # -- request handling -------------------------------------------------------------------

    def _make_handler(self, endpoint: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, endpoint)

        return handler

    async def _handle(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        body = await request.read()
        spec = self._key_spec(request)
        account = spec.account if spec else None
        record = RecordedRequest(
            seq=next(self._seq),
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body,
            account=account,
            received_at=time.time(),
        )
        self._requests.append(record)
        fault = self._faults.take(account, endpoint, time.monotonic())
        if fault is not None:
            response = await self._apply_fault(fault, request)
            if response is not None or fault.kind is not FaultKind.SLOW:
                return self._finish(record, response)
        try:
            response = self._process(request, endpoint, spec, body, record)
        except ApiError as error:
            response = _error_response(error)
        return self._finish(record, response)

    def _finish(
        self, record: RecordedRequest, response: web.StreamResponse | None
    ) -> web.StreamResponse:
        if response is None:
            # The connection is gone; aiohttp needs a response object it will not manage to send.
            return web.Response(status=500)
        record.status = response.status
        self._status_counts[response.status] = self._status_counts.get(response.status, 0) + 1
        return response

    async def _apply_fault(self, fault: Fault, request: web.Request) -> web.StreamResponse | None:
        if fault.kind is FaultKind.SLOW:
            await self._sleep(fault.delay_s or 1.0)
            return None
        if fault.kind is FaultKind.HANG:
            await self._sleep(fault.delay_s or _HANG_DEFAULT_S)
            _drop(request)
            return None
        if fault.kind is FaultKind.DROP:
            _drop(request)
            return None
        if fault.kind is FaultKind.HTML:
            page = fault.body or (
                f"<html><head><title>{fault.status}</title></head><body>"
                f"<h1>Error {fault.status}</h1><p>Request blocked.</p>"
                "</body></html>"
            )
            return web.Response(status=fault.status, text=page, content_type="text/html")
        code = {500: "error", 503: "service_unavailable", 504: "gateway_timeout"}.get(
            fault.status, "error"
        )
        error = ApiError(fault.status, code, fault.body or "Injected fault.")
        return _error_response(error)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _key_spec(self, request: web.Request) -> KeySpec | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith(_AUTH_PREFIX):
            return None
        return self._keys.get(header[len(_AUTH_PREFIX) :].strip())

    def _process(
        self,
        request: web.Request,
        endpoint: str,
        spec: KeySpec | None,
        body: bytes,
        record: RecordedRequest,
    ) -> web.StreamResponse:
        if spec is None:
            raise ApiError(
                401,
                "not_authenticated",
                "Missing or invalid private key.",
                parameter="Authorization",
            )
        needed = PROFILES_READ if endpoint == "profiles" else EVENTS_WRITE
        if needed not in spec.scopes:
            raise ApiError(
                403, "permission_denied", f"Your API key is missing required scopes: {needed}."
            )
        headers: dict[str, str] = {}
        if endpoint != "profiles":
            limits = self.limits(spec.account)
            window_limit = limits.events if endpoint == "events" else limits.bulk
            windows = self._windows.setdefault((spec.account, endpoint), SlidingWindows())
            admission = windows.admit(time.monotonic(), window_limit)
            if not admission.admitted:
                self._throttled += 1
                n = admission.retry_after_s
                error = ApiError(
                    429,
                    "throttled",
                    f"Request was throttled. Expected available "
                    f"in {n} second{'s' if n != 1 else ''}.",
                )
                throttled = _error_response(error)
                if limits.retry_after_header:
                    throttled.headers["Retry-After"] = str(n)
                return throttled
            headers = {
                "RateLimit-Limit": str(admission.limit),
                "RateLimit-Remaining": str(admission.remaining),
                "RateLimit-Reset": str(admission.reset_s),
            }
        try:
            self._check_headers(request, has_body=endpoint != "profiles")
            if endpoint == "profiles":
                response: web.StreamResponse = web.json_response(
                    {"data": [], "links": {}}, content_type=JSON_API
                )
            else:
                events = self._parse(endpoint, body)
                self._record(spec.account, endpoint, events, record)
                response = web.Response(status=202)
        except ApiError as error:
            response = _error_response(error)
        response.headers.update(headers)
        return response

    def _check_headers(self, request: web.Request, has_body: bool) -> None:
        revision = request.headers.get("revision")
        if revision is None:
            raise ApiError(
                400, "invalid", "Missing required header 'revision'.", parameter="revision"
            )
        if not _REVISION.fullmatch(revision.strip()):
            raise ApiError(
                400,
                "invalid",
                f"Invalid revision '{revision}' (expected YYYY-MM-DD[.suffix]).",
                parameter="revision",
            )
        accept = request.headers.get("Accept")
        if accept is not None and not any(
            part.split(";")[0].strip() in _ACCEPTABLE for part in accept.split(",")
        ):
            raise ApiError(
                406, "not_acceptable", f"Cannot answer with '{accept}'.", parameter="Accept"
            )
        if has_body:
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            if content_type != JSON_API:
                raise ApiError(
                    415,
                    "unsupported_media_type",
                    f"Unsupported media type '{content_type}' in request; expected '{JSON_API}'.",
                )

    def _parse(self, endpoint: str, body: bytes) -> list[EventIn]:
        if len(body) > MAX_PAYLOAD_BYTES:
            raise invalid("The payload may be at most 5 MB.", "/")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise invalid("The request body is not valid JSON.", "/") from None
        now = datetime.now(UTC)
        if endpoint == "events":
            return [parse_event_create(document, now)]
        return parse_bulk_job(document, now)

    def _record(
        self, account: str, endpoint: str, events: list[EventIn], record: RecordedRequest
    ) -> None:
        keep = self._config.record_events
        timeline = self._timeline.setdefault(account, [])
        received = self._received.setdefault(account, [])
        for event in events:
            self._received_counts[account] = self._received_counts.get(account, 0) + 1
            # Without unique_id Klaviyo falls back to the time to the second.
            unique = (
                event.unique_id
                if event.unique_id is not None
                else (f"time:{event.time or int(record.received_at)}")
            )
            key = (account, event.identity, event.metric, unique)
            first = key not in self._seen
            if first:
                self._seen.add(key)
                self._timeline_counts[account] = self._timeline_counts.get(account, 0) + 1
            if not keep:
                continue
            recorded = RecordedEvent(
                account=account,
                endpoint=endpoint,
                metric=event.metric,
                profile=event.profile,
                profile_identity=event.identity,
                unique_id=event.unique_id,
                time=event.time,
                properties=event.properties,
                value=event.value,
                value_currency=event.value_currency,
                backfill=event.backfill,
                request_seq=record.seq,
                received_at=record.received_at,
                attributes=event.attributes,
            )
            received.append(recorded)
            if first:
                timeline.append(recorded)


def _error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, content_type=JSON_API)


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
