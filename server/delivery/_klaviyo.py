"""The Klaviyo HTTP client: sends one request, classifies the answer, never raises.

The engine decides what to do with an outcome (retry, fail the event, hold the integration);
this module only turns every way a request can end — a status code, a CDN's HTML page, a
timeout, a reset connection — into a :class:`KlaviyoResult` whose ``detail`` is safe to log
and to show to an operator. The raw key is revealed only to build the ``Authorization``
header, and scrubbed from any text a response or a transport error could carry back.

Classification:
- 2xx -> ACCEPTED.
- 429 -> RATE_LIMITED; ``retry_after_s`` from ``Retry-After`` (seconds or HTTP date), else from
  the "Expected available in N second(s)" text, else None (the limiter then backs off).
- 401/403 with Klaviyo's JSON error body -> KEY_REJECTED. Without one (a CDN's HTML challenge
  page) -> TRANSIENT: Klaviyo never judged the key.
- 408/425 -> TRANSIENT; any other 4xx -> INVALID (detail from ``errors[]`` or the page text).
- 5xx, timeouts, connection failures -> TRANSIENT.

Key check (:meth:`KlaviyoClient.probe_key`): Klaviyo reports no scopes, and the forwarder's key
may read nothing. So the probe is a Create Event whose body Klaviyo must refuse (``properties``
alone: no metric, no profile). Klaviyo checks the key, then the scope, then the body; the probe
never writes, and its answer tells (:class:`KeyVerdict`): 401 -> UNKNOWN_KEY, 403 ->
SCOPE_MISSING (no ``events:write``), 400 -> VALID (the key passed both checks). Anything else
— a CDN's page, 429, 5xx, a timeout, no connection — is INCONCLUSIVE: nothing was learnt.
"""

from __future__ import annotations

import email.utils
import enum
import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import structlog

from server import _tracing as tracing
from server._secret import PrivateKey

log = structlog.get_logger(__name__)

JSON_API: Final = "application/vnd.api+json"
EVENTS_PATH: Final = "/api/events"
BULK_PATH: Final = "/api/event-bulk-create-jobs"
PROFILES_PATH: Final = "/api/profiles"
# Refused by Klaviyo's body validation (EventCreateQueryV2 requires metric and profile), which
# runs only after the key and its events:write scope passed: nothing can be written.
PROBE_BODY: Final = {"data": {"type": "event", "attributes": {"properties": {}}}}
# A registration waits for the probe: never as long as a delivery request may take.
PROBE_TIMEOUT_S: Final = 5.0

# An operator reads detail in GetIntegration; a CDN page or a long error list must not flood it.
_MAX_DETAIL_CHARS: Final = 500
_EXPECTED_AVAILABLE = re.compile(r"Expected available in (\d+(?:\.\d+)?) second", re.IGNORECASE)
_TAGS = re.compile(r"<[^>]+>")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class KlaviyoConfig:
    """Where Klaviyo is and how patiently to talk to it."""

    base_url: str = "https://a.klaviyo.com"
    revision: str = "2026-07-15"
    timeout_s: float = 10.0
    max_connections: int = 200


class Endpoint(enum.StrEnum):
    """The two write endpoints; each has its own rate-limit windows."""

    EVENTS = "events"
    BULK = "bulk"


class Outcome(enum.StrEnum):
    """What a request's answer means for the events in it."""

    ACCEPTED = "accepted"  # 202: Klaviyo has the events.
    RATE_LIMITED = "rate_limited"  # 429: retry after retry_after_s (or a backoff).
    KEY_REJECTED = "key_rejected"  # 401/403: hold the integration's events until a new key.
    INVALID = "invalid"  # Any other 4xx: the payload is wrong; retrying cannot help.
    TRANSIENT = "transient"  # 5xx, timeout, connection failure: retry with backoff.


class KeyVerdict(enum.StrEnum):
    """What a key probe found out about a key."""

    VALID = "valid"  # 400 to the probe's invalid body: the key and events:write passed.
    UNKNOWN_KEY = "unknown_key"  # 401: Klaviyo does not know the key.
    SCOPE_MISSING = "scope_missing"  # 403: a valid key without events:write.
    INCONCLUSIVE = "inconclusive"  # 429, 5xx, a CDN page, timeout, unreachable, unexpected.


@dataclass(frozen=True, slots=True)
class KeyCheck:
    """The answer to a key probe; ``detail`` is safe to show (never the key)."""

    verdict: KeyVerdict
    status_code: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class RateLimitHeaders:
    """``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (the steady window)."""

    limit: int | None
    remaining: int | None
    reset_s: float | None


@dataclass(frozen=True, slots=True)
class KlaviyoResult:
    """The classified answer to one request."""

    outcome: Outcome
    status_code: int | None
    retry_after_s: float | None
    # Klaviyo's error code/title/detail or a short transport-failure description; never the key.
    detail: str
    rate_limit: RateLimitHeaders | None = None

    @property
    def ok(self) -> bool:
        """True if Klaviyo accepted the request."""
        return self.outcome is Outcome.ACCEPTED


class KlaviyoClient:
    """Async client for Create Event and Bulk Create Events (one per process is enough)."""

    def __init__(
        self, config: KlaviyoConfig, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._config = config
        self._http = httpx.AsyncClient(
            base_url=config.base_url,
            timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
            ),
            transport=transport,
            # Redirects from an API endpoint would mean a misconfigured base_url; following one
            # would send the key to wherever it points.
            follow_redirects=False,
        )

    @property
    def config(self) -> KlaviyoConfig:
        """The configuration this client was built with."""
        return self._config

    async def create_event(self, key: PrivateKey, body: Mapping[str, Any]) -> KlaviyoResult:
        """``POST /api/events`` with an ``EventCreateQueryV2`` body."""
        return await self._post(EVENTS_PATH, key, body)

    async def create_bulk_job(self, key: PrivateKey, body: Mapping[str, Any]) -> KlaviyoResult:
        """``POST /api/event-bulk-create-jobs`` with an ``EventsBulkCreateJob`` body."""
        return await self._post(BULK_PATH, key, body)

    async def check_key(self, key: PrivateKey) -> KlaviyoResult:
        """Tells a wrong key from a valid one without needing any read scope.

        ``GET /api/profiles`` answers 401 for an unknown key and 403 for a valid key lacking
        ``profiles:read`` (the scopes we ask for). So: KEY_REJECTED only for 401; a 403 or a
        200 means the key exists and is reported as ACCEPTED.
        """
        result = await tracing.klaviyo_request(
            "GET", PROFILES_PATH, None, self._send("GET", PROFILES_PATH, key, None)
        )
        if result.status_code in (200, 403):
            return KlaviyoResult(
                Outcome.ACCEPTED, result.status_code, None, "key is valid", result.rate_limit
            )
        return result

    async def probe_key(self, key: PrivateKey) -> KeyCheck:
        """Checks the key and its ``events:write`` scope without writing (see the module doc)."""
        content = json.dumps(PROBE_BODY).encode()
        timeout = min(self._config.timeout_s, PROBE_TIMEOUT_S)
        response, failure = await self._request("POST", EVENTS_PATH, key, content, timeout)
        if response is None:
            return KeyCheck(KeyVerdict.INCONCLUSIVE, None, failure)
        status = response.status_code
        detail = _scrub(_error_detail(response), key)
        if status in (400, 401, 403) and _is_klaviyo_error(response):
            verdict = {
                400: KeyVerdict.VALID,
                401: KeyVerdict.UNKNOWN_KEY,
                403: KeyVerdict.SCOPE_MISSING,
            }[status]
            return KeyCheck(verdict, status, detail)
        if 200 <= status < 300:
            # Not what Klaviyo documents for this body, but the key and scope passed either way.
            log.warning("klaviyo.probe_accepted", status=status, key=key.fingerprint)
            return KeyCheck(KeyVerdict.VALID, status, f"HTTP {status}")
        return KeyCheck(KeyVerdict.INCONCLUSIVE, status, detail)

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def _post(self, path: str, key: PrivateKey, body: Mapping[str, Any]) -> KlaviyoResult:
        content = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        return await tracing.klaviyo_request(
            "POST", path, body, self._send("POST", path, key, content)
        )

    async def _send(
        self, method: str, path: str, key: PrivateKey, content: bytes | None
    ) -> KlaviyoResult:
        response, failure = await self._request(method, path, key, content)
        if response is None:
            result = KlaviyoResult(Outcome.TRANSIENT, None, None, failure, None)
        else:
            result = classify(response, key)
        if result.outcome is not Outcome.ACCEPTED:
            log.debug(
                "klaviyo.response",
                method=method,
                path=path,
                key=key.fingerprint,
                outcome=str(result.outcome),
                status=result.status_code,
                detail=result.detail,
            )
        return result

    async def _request(
        self,
        method: str,
        path: str,
        key: PrivateKey,
        content: bytes | None,
        timeout_s: float | None = None,
    ) -> tuple[httpx.Response | None, str]:
        """The response, or None and a scrubbed description of the transport failure."""
        headers = {
            "Authorization": f"Klaviyo-API-Key {key.reveal()}",
            "revision": self._config.revision,
            "Accept": JSON_API,
        }
        if content is not None:
            headers["Content-Type"] = JSON_API
        timeout = self._config.timeout_s if timeout_s is None else timeout_s
        try:
            response = await self._http.request(
                method, path, content=content, headers=headers, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            return None, _transport_failure(f"timeout after {timeout:g}s", exc, key)
        except httpx.TransportError as exc:
            return None, _transport_failure("connection failed", exc, key)
        return response, ""


def classify(response: httpx.Response, key: PrivateKey | None = None) -> KlaviyoResult:
    """Turns an HTTP response into a :class:`KlaviyoResult` (reads an already-read body)."""
    status = response.status_code
    rate_limit = parse_rate_limit_headers(response.headers)
    if status in (200, 201, 202, 204):
        return KlaviyoResult(Outcome.ACCEPTED, status, None, "", rate_limit)
    detail = _scrub(_error_detail(response), key)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is None:
            retry_after = _expected_available(response.text)
        return KlaviyoResult(Outcome.RATE_LIMITED, status, retry_after, detail, rate_limit)
    if status in (401, 403):
        if not _is_klaviyo_error(response):
            # A CDN's HTML challenge page, not Klaviyo judging the key: holding the workspace's
            # events until someone pastes a new key would be the wrong cure. Retry instead.
            return KlaviyoResult(Outcome.TRANSIENT, status, None, detail, rate_limit)
        return KlaviyoResult(Outcome.KEY_REJECTED, status, None, detail, rate_limit)
    if 400 <= status < 500:
        # 408 and 425 are the server or proxy asking for a retry, not a judgement on the payload.
        outcome = Outcome.TRANSIENT if status in (408, 425) else Outcome.INVALID
        return KlaviyoResult(outcome, status, None, detail, rate_limit)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return KlaviyoResult(Outcome.TRANSIENT, status, retry_after, detail, rate_limit)


def parse_rate_limit_headers(headers: httpx.Headers) -> RateLimitHeaders | None:
    """The ``RateLimit-*`` headers, or None when the response has none."""
    limit = _leading_number(headers.get("RateLimit-Limit"))
    remaining = _leading_number(headers.get("RateLimit-Remaining"))
    reset = _leading_number(headers.get("RateLimit-Reset"))
    if limit is None and remaining is None and reset is None:
        return None
    return RateLimitHeaders(
        limit=None if limit is None else int(limit),
        remaining=None if remaining is None else int(remaining),
        reset_s=reset,
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _expected_available(text: str) -> float | None:
    match = _EXPECTED_AVAILABLE.search(text)
    return float(match.group(1)) if match else None


def _leading_number(value: str | None) -> float | None:
    # Draft RateLimit headers allow parameters ("3500, 3500;w=60"); the first number is ours.
    if not value:
        return None
    match = re.match(r"\s*(\d+(?:\.\d+)?)", value)
    if not match:
        return None
    number = float(match.group(1))
    return number if math.isfinite(number) else None


def _is_klaviyo_error(response: httpx.Response) -> bool:
    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(payload, dict) and isinstance(payload.get("errors"), list)


def _error_detail(response: httpx.Response) -> str:
    status = response.status_code
    try:
        payload = response.json()
    except (ValueError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("errors"), list):
        parts = [_format_error(error) for error in payload["errors"] if isinstance(error, dict)]
        if parts:
            return _truncate(f"HTTP {status}: " + "; ".join(parts))
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip() or "no type"
    text = _SPACES.sub(" ", _TAGS.sub(" ", response.text)).strip()
    reason = response.reason_phrase or "error"
    if text:
        return _truncate(f"HTTP {status} {reason} ({content_type} body): {text}")
    return f"HTTP {status} {reason}"


def _format_error(error: Mapping[str, Any]) -> str:
    code = str(error.get("code") or "error")
    title = str(error.get("title") or "")
    detail = str(error.get("detail") or "")
    text = code
    if title:
        text += f" ({title})"
    if detail and detail != title:
        text += f": {detail}"
    source = error.get("source")
    if isinstance(source, dict):
        where = source.get("pointer") or source.get("parameter")
        if where:
            text += f" at {where}"
    return text


def _transport_failure(what: str, exc: Exception, key: PrivateKey) -> str:
    message = str(exc) or type(exc).__name__
    return _scrub(_truncate(f"{what}: {type(exc).__name__}: {message}"), key)


def _scrub(text: str, key: PrivateKey | None) -> str:
    # Klaviyo does not echo keys, but a proxy's error page or a transport error might.
    if key is not None:
        raw = key.reveal()
        if raw and raw in text:
            text = text.replace(raw, key.fingerprint)
    return text


def _truncate(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"
