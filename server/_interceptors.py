"""Server interceptors: authentication first, then request logging and latency metrics.

Ingest RPCs arrive thousands of times a second, so their successful calls are logged at
debug level; admin RPCs and every failure are logged at info/warning.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import structlog
from google.protobuf.message import DecodeError

from server._auth import METHOD_ROLES, Principal, Role, TokenRegistry
from server._errors import ApiError, Reason, Violation, abort, invalid_argument
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
_GARBAGE = invalid_argument([Violation("", "the request bytes are not a valid protobuf message")])


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


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # not generic at runtime
    """Binds a request id to every log line of a call, logs its outcome, times it."""

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        short = method.rsplit("/", 1)[-1]
        request_id = _metadata(details, "x-request-id") or uuid.uuid4().hex[:16]
        quiet = METHOD_ROLES.get(method) is Role.INGEST or not method.startswith("/elido.")

        def finish(
            context: grpc.aio.ServicerContext[Any, Any], started: float, exc: BaseException | None
        ) -> None:
            code = context.code() if hasattr(context, "code") else None
            code_name = (
                code.name if isinstance(code, grpc.StatusCode) else ("UNKNOWN" if exc else "OK")
            )
            elapsed = time.perf_counter() - started
            RPC_LATENCY.labels(short, code_name).observe(elapsed)
            if code_name != "OK":
                emit = _log.warning
            elif not quiet:
                emit = _log.info
            else:
                emit = _log.debug  # a no-op unless debug logging is on: nothing is built
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
                unary_unary=unary, request_deserializer=_lenient(handler.request_deserializer)
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
