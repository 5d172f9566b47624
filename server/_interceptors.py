"""Server interceptors: request logging and metrics, authentication, stream limits.

Ingest RPCs arrive thousands of times a second, so their successful calls are logged at
debug level; admin RPCs and every failure are logged at info/warning. Every refused call is
logged once and counted with the code the caller received.

Message size: gRPC itself refuses a message over its receive limit before any handler runs,
without details, and a unary handler never learns of it. So gRPC's limit is set at
:func:`grpc_receive_limit` (twice ``FORWARDER_MAX_MESSAGE_BYTES``) and the configured limit is
enforced here, where the refusal gets ``RESOURCE_EXHAUSTED`` with ``MESSAGE_TOO_LARGE``
details, a log line and a count. A stream that gRPC ends (a message over twice the limit) is
still logged and counted; a unary call over twice the limit is refused by gRPC alone. Unary
methods stay unary handlers: serving them as stream-unary to see gRPC's refusals cost about a
fifth of ``ForwardClick``'s throughput.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError

from server._auth import METHOD_ROLES, Principal, Role, TokenRegistry
from server._errors import ApiError, Reason, abort
from server._metrics import RPC_LATENCY

_log = structlog.get_logger("server.rpc")

# Strings: grpc's runtime classes are not generic, only their stubs are.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler]]"


def _metadata(details: grpc.HandlerCallDetails, key: str) -> str | None:
    # At runtime these are _Metadatum(key, value) named tuples.
    for item_key, value in details.invocation_metadata or ():
        if item_key == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


class _Refused:
    """Stands in for a request message refused before parsing, with the error to answer."""

    __slots__ = ("error",)

    def __init__(self, error: ApiError) -> None:
        self.error = error


# The whole request is bad, not one field of it: no BadRequest with an empty field path.
_UNDECODABLE = _Refused(
    ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request: the request bytes are not a valid protobuf message of the method's "
        "request type",
        Reason.INVALID_ARGUMENT,
    )
)
_TOO_LARGE = "a request message over twice FORWARDER_MAX_MESSAGE_BYTES, refused by gRPC"


def grpc_receive_limit(max_message_bytes: int) -> int:
    """gRPC's own receive limit: above the configured one, which the interceptor enforces."""
    return min(2 * max_message_bytes, 2**31 - 1)


def _oversized(size: int, limit: int) -> _Refused:
    return _Refused(
        ApiError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the request message is {size} bytes, over FORWARDER_MAX_MESSAGE_BYTES ({limit})",
            Reason.MESSAGE_TOO_LARGE,
            metadata={"limit": str(limit), "size": str(size)},
        )
    )


def _ended_by_grpc(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """True when gRPC itself already ended the call (the handler set no status).

    gRPC answers a message over ``grpc.max_receive_message_length`` with RESOURCE_EXHAUSTED
    on its own: the handler only sees its request stream end, and the call's peer is gone.
    (A client that cancels or half-closes leaves the peer in place.)
    """
    return not context.peer()


@functools.lru_cache(maxsize=128)  # one per method: built once, not per call
def _lenient(
    deserializer: Callable[[bytes], Any] | None, limit: int
) -> Callable[[bytes], Any] | None:
    # grpc answers a deserializer's exception with UNKNOWN and a Python class name; a caller
    # sending garbage deserves INVALID_ARGUMENT like any other bad input.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        if len(data) > limit:
            return _oversized(len(data), limit)
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return parse


async def _checked(requests: Any) -> AsyncIterator[Any]:
    async for request in requests:
        if request.__class__ is _Refused:
            raise request.error
        yield request


def _rejecting_handler(streaming: bool, error: ApiError) -> Handler:
    async def reject_unary(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort(context, error)

    async def reject_stream(
        _requests: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        await abort(context, error)
        yield  # pragma: no cover - makes this an async generator

    if streaming:
        return grpc.stream_stream_rpc_method_handler(reject_stream)
    return grpc.unary_unary_rpc_method_handler(reject_unary)


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # not generic at runtime
    """Requires ``authorization: Bearer <token>`` with the role the method needs."""

    def __init__(self, registry: TokenRegistry) -> None:
        self._registry = registry

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        role = METHOD_ROLES.get(details.method)
        if role is None:
            return await continuation(details)
        streaming = details.method.endswith("/StreamClicks")
        principal: Principal | None = self._registry.authenticate(
            _metadata(details, "authorization")
        )
        if principal is None:
            return _rejecting_handler(
                streaming,
                ApiError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown bearer token",
                    Reason.UNAUTHENTICATED,
                ),
            )
        if role not in principal.roles:
            return _rejecting_handler(
                streaming,
                ApiError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"token {principal.name!r} lacks the {role.value!r} role",
                    Reason.PERMISSION_DENIED,
                    metadata={"required_role": role.value},
                ),
            )
        return await continuation(details)


@functools.lru_cache(maxsize=256)
def _method_facts(method: str) -> tuple[str, bool]:
    """A method's short name, and whether its successful calls are quiet (debug level)."""
    quiet = METHOD_ROLES.get(method) is Role.INGEST or not method.startswith("/elido.")
    return method.rsplit("/", 1)[-1], quiet


@functools.lru_cache(maxsize=1024)
def _latency(method: str, code: str) -> Any:
    # prometheus_client's labels() validates and locks on every call: once per pair is enough.
    return RPC_LATENCY.labels(method, code)


# Request ids for calls that bring none: unique per process (a random prefix, a counter), so
# a busy server does not pay for a random UUID on every call.
_ID_PREFIX: Final = os.urandom(4).hex()
_call_numbers = itertools.count()


def _new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_call_numbers) & 0xFFFFFFFF:08x}"


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # not generic at runtime
    """Binds a request id to every log line of a call, logs its outcome, times it; refuses
    request messages over ``max_message_bytes`` (see the module docstring)."""

    def __init__(self, max_message_bytes: int) -> None:
        self._limit = max_message_bytes

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return None
        short, quiet = _method_facts(details.method)
        request_id = _metadata(details, "x-request-id") or _new_request_id()

        def finish(
            context: grpc.aio.ServicerContext[Any, Any], started: float, exc: BaseException | None
        ) -> None:
            code = context.code() if hasattr(context, "code") else None
            detail = ""
            if isinstance(code, grpc.StatusCode):
                code_name = code.name
            elif _ended_by_grpc(context):
                code_name, detail = "RESOURCE_EXHAUSTED", _TOO_LARGE
            elif isinstance(exc, asyncio.CancelledError):
                code_name = "CANCELLED"  # the caller went away
            else:
                code_name = "UNKNOWN" if exc else "OK"
            elapsed = time.perf_counter() - started
            _latency(short, code_name).observe(elapsed)
            if code_name != "OK":
                emit = _log.warning
            elif not quiet:
                emit = _log.info
            else:
                emit = _log.debug  # a no-op unless debug logging is on: nothing is built
            if detail:
                emit("rpc finished", method=short, code=code_name, request_id=request_id,
                     duration_ms=round(elapsed * 1000, 2), detail=detail)  # fmt: skip
            else:
                emit("rpc finished", method=short, code=code_name, request_id=request_id,
                     duration_ms=round(elapsed * 1000, 2))  # fmt: skip

        if handler.unary_unary is not None:
            # grpc-stubs types handler behaviours as synchronous; on grpc.aio they are coroutines.
            inner: Any = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started = time.perf_counter()
                structlog.contextvars.bind_contextvars(request_id=request_id)
                exc: BaseException | None = None
                try:
                    if request.__class__ is _Refused:
                        await abort(context, request.error)
                    return await inner(request, context)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    finish(context, started, exc)
                    structlog.contextvars.unbind_contextvars("request_id")

            return handler._replace(  # type: ignore[attr-defined, no-any-return]  # RpcMethodHandler is a namedtuple at runtime
                unary_unary=unary,
                request_deserializer=_lenient(handler.request_deserializer, self._limit),
            )
        if handler.stream_stream is not None:
            inner_stream: Any = handler.stream_stream

            async def stream(
                requests: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                started = time.perf_counter()
                structlog.contextvars.bind_contextvars(request_id=request_id)
                exc: BaseException | None = None
                try:
                    async for response in inner_stream(_checked(requests), context):
                        yield response
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    finish(context, started, exc)
                    structlog.contextvars.unbind_contextvars("request_id")

            return handler._replace(  # type: ignore[attr-defined, no-any-return]  # see above
                stream_stream=stream,
                request_deserializer=_lenient(handler.request_deserializer, self._limit),
            )
        return handler


class StreamLimitInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # not generic at runtime
    """Bounds the API's client streams: how many one caller holds, and how long one idles.

    A stream costs memory (about 100 kB with its worker lane and buffers) for as long as it
    is open, whether or not clicks flow. A caller is its bearer token: each token may hold
    ``max_per_caller`` streams at once (more answer RESOURCE_EXHAUSTED with RetryInfo), and a
    stream that sends no request for ``idle_timeout_s`` is ended with UNAVAILABLE (reason
    STREAM_IDLE, RetryInfo 0): a sender opens a new one when it has clicks again.
    Runs after :class:`AuthInterceptor`, so only authenticated calls are counted.
    """

    def __init__(self, max_per_caller: int, idle_timeout_s: float) -> None:
        self._max = max_per_caller
        self._idle_s = idle_timeout_s
        self._open: Counter[str] = Counter()

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if (
            handler is None
            or handler.stream_stream is None
            or not details.method.startswith("/elido.")
        ):
            return handler
        inner: Any = handler.stream_stream
        # The token's hash names the caller: the token itself is never kept.
        caller = hashlib.sha256((_metadata(details, "authorization") or "").encode()).hexdigest()
        too_many = ApiError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this token already holds {self._max} open streams "
            "(FORWARDER_MAX_STREAMS_PER_CALLER); close one or reuse it",
            Reason.TOO_MANY_STREAMS,
            retry_after_s=1.0,
            metadata={"limit": str(self._max)},
        )

        async def stream(
            requests: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if self._open[caller] >= self._max:
                await abort(context, too_many)
            self._open[caller] += 1
            try:
                async for response in inner(self._idle_limited(requests), context):
                    yield response
            finally:
                self._open[caller] -= 1
                if not self._open[caller]:
                    del self._open[caller]

        return handler._replace(stream_stream=stream)  # type: ignore[attr-defined, no-any-return]  # see above

    async def _idle_limited(self, requests: Any) -> AsyncIterator[Any]:
        iterator = aiter(requests)
        while True:
            try:
                async with asyncio.timeout(self._idle_s):
                    request = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ApiError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the stream sent nothing for {self._idle_s:g} s "
                    "(FORWARDER_STREAM_IDLE_TIMEOUT_S); open a new one to send more",
                    Reason.STREAM_IDLE,
                    retry_after_s=0.0,
                ) from None
            yield request
