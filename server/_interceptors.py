"""Server interceptors: request logging and metrics, authentication, stream limits.

Ingest RPCs arrive thousands of times a second, so their successful calls are logged at
debug level; admin RPCs and every failure are logged at info/warning. Every refused call is
logged once and counted with the code the caller received, including those gRPC itself
refuses (a message over the size limit) before any handler runs.
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


class _Undecodable:
    """Stands in for a request whose bytes are not the expected message."""

    __slots__ = ()


_UNDECODABLE = _Undecodable()
# The whole request is bad, not one field of it: no BadRequest with an empty field path.
_GARBAGE = ApiError(
    grpc.StatusCode.INVALID_ARGUMENT,
    "invalid request: the request bytes are not a valid protobuf message of the method's "
    "request type",
    Reason.INVALID_ARGUMENT,
)
_NO_REQUEST = ApiError(
    grpc.StatusCode.INVALID_ARGUMENT,
    "invalid request: a unary call carries exactly one request message, none arrived",
    Reason.INVALID_ARGUMENT,
)
_TOO_LARGE = "a request message over FORWARDER_MAX_MESSAGE_BYTES, refused by gRPC"


def _ended_by_grpc(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """True when gRPC itself already ended the call (the handler set no status).

    gRPC answers a message over ``grpc.max_receive_message_length`` with RESOURCE_EXHAUSTED
    on its own: the handler only sees its request stream end, and the call's peer is gone.
    (A client that cancels or half-closes leaves the peer in place.)
    """
    return not context.peer()


@functools.lru_cache(maxsize=128)  # one per method: built once, not per call
def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # grpc answers a deserializer's exception with UNKNOWN and a Python class name; a caller
    # sending garbage deserves INVALID_ARGUMENT like any other bad input.
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _UNDECODABLE

    return parse


async def _checked(requests: Any) -> AsyncIterator[Any]:
    async for request in requests:
        if request is _UNDECODABLE:
            raise _GARBAGE
        yield request


async def _first(requests: Any) -> Any:
    async for request in requests:
        return request
    return None


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
    """Binds a request id to every log line of a call, logs its outcome, times it."""

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

            # Served as stream-unary (identical on the wire): a unary handler is never called
            # when gRPC refuses the request message, so the refusal would go unlogged.
            async def unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                started = time.perf_counter()
                structlog.contextvars.bind_contextvars(request_id=request_id)
                exc: BaseException | None = None
                try:
                    request = await _first(requests)
                    if request is None:
                        if _ended_by_grpc(context):
                            return None  # gRPC answered RESOURCE_EXHAUSTED; finish() logs it
                        await abort(context, _NO_REQUEST)
                    if request is _UNDECODABLE:
                        await abort(context, _GARBAGE)
                    return await inner(request, context)
                except BaseException as e:
                    exc = e
                    raise
                finally:
                    finish(context, started, exc)
                    structlog.contextvars.unbind_contextvars("request_id")

            return handler._replace(  # type: ignore[attr-defined, no-any-return]  # RpcMethodHandler is a namedtuple at runtime
                request_streaming=True,
                unary_unary=None,
                stream_unary=unary,
                request_deserializer=_lenient(handler.request_deserializer),
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
                stream_stream=stream, request_deserializer=_lenient(handler.request_deserializer)
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
