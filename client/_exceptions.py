"""Errors raised by the forwarder client.

Every failed call raises a :class:`ForwarderError` subclass chosen by the canonical gRPC code;
the rich details the server attaches (``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer) are parsed on first access::

    ClientError                      problems detected before any call is made
    └── ConfigError                  bad or missing client configuration
    ForwarderError                   a call failed; .code .reason .field_violations .retry_delay
    ├── InvalidArgument              INVALID_ARGUMENT, also OUT_OF_RANGE
    ├── NotFound                     NOT_FOUND
    ├── AlreadyExists                ALREADY_EXISTS
    ├── FailedPrecondition           FAILED_PRECONDITION
    ├── Unauthenticated              UNAUTHENTICATED (missing or bad token)
    ├── PermissionDenied             PERMISSION_DENIED (token lacks the role)
    ├── ResourceExhausted            RESOURCE_EXHAUSTED (back off; see .retry_delay)
    ├── Unavailable                  UNAVAILABLE (server unreachable, or Vault down)
    ├── DeadlineExceeded             DEADLINE_EXCEEDED
    ├── Cancelled                    CANCELLED
    ├── Unimplemented                UNIMPLEMENTED
    └── InternalError                INTERNAL, UNKNOWN, DATA_LOSS, ABORTED and anything else

Text taken from the server passes through :func:`client._redact.redact`, so an exception's
``str``/``repr`` cannot carry a private key even if a server bug echoed one.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from functools import cached_property
from typing import Any, Final, Protocol, cast

import grpc
from google.rpc import error_details_pb2, status_pb2

from client._redact import redact

ERROR_DOMAIN: Final = "forwarder.elido.io"
_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"


class ClientError(Exception):
    """Base of errors the client detects itself, before or without a call."""


class ConfigError(ClientError):
    """The client configuration is missing something or contradicts itself."""


class _RpcErrorLike(Protocol):
    """What both ``grpc.RpcError`` flavours (sync ``Call`` and ``aio.AioRpcError``) offer."""

    def code(self) -> grpc.StatusCode: ...

    def details(self) -> str | None: ...

    def trailing_metadata(self) -> Any: ...


class ForwarderError(Exception):
    """A call to the forwarder failed.

    ``code`` and ``message`` are known at once; ``reason``, ``field_violations`` and
    ``retry_delay`` come from the status details and are decoded on first access.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        method: str = "",
        status_details: bytes | None = None,
    ) -> None:
        self.message = redact(message)
        if code is not None:
            self.code = code
        self.method = method
        self._status_details = status_details
        super().__init__(self.message)

    @cached_property
    def _status(self) -> Any:
        if not self._status_details:
            return None
        status = status_pb2.Status()
        try:
            status.ParseFromString(self._status_details)
        except Exception:  # A garbled trailer must not hide the error itself.
            return None
        return status

    def _details_of(self, message_type: Any) -> list[Any]:
        found = []
        if self._status is not None:
            for detail in self._status.details:
                if detail.Is(message_type.DESCRIPTOR):
                    msg = message_type()
                    detail.Unpack(msg)
                    found.append(msg)
        return found

    @cached_property
    def reason(self) -> str:
        """The ``ErrorInfo`` reason (e.g. ``INTEGRATION_NOT_FOUND``), or ``""``."""
        infos = self._details_of(error_details_pb2.ErrorInfo)
        preferred = [i for i in infos if i.domain == ERROR_DOMAIN] or infos
        return str(preferred[0].reason) if preferred else ""

    @cached_property
    def error_metadata(self) -> dict[str, str]:
        """The ``ErrorInfo`` metadata map (redacted), or an empty dict."""
        infos = self._details_of(error_details_pb2.ErrorInfo)
        return {str(k): redact(str(v)) for k, v in infos[0].metadata.items()} if infos else {}

    @cached_property
    def field_violations(self) -> list[tuple[str, str]]:
        """``(field, description)`` pairs from ``BadRequest``, in the server's order."""
        return [
            (redact(str(v.field)), redact(str(v.description)))
            for bad_request in self._details_of(error_details_pb2.BadRequest)
            for v in bad_request.field_violations
        ]

    @cached_property
    def retry_delay(self) -> dt.timedelta | None:
        """How long the server asked callers to wait (``RetryInfo``), or ``None``."""
        infos = self._details_of(error_details_pb2.RetryInfo)
        if not infos or not infos[0].HasField("retry_delay"):
            return None
        delay = infos[0].retry_delay
        return dt.timedelta(seconds=delay.seconds, microseconds=delay.nanos // 1000)

    def __str__(self) -> str:
        text = self.message or self.code.name
        if self.field_violations:
            text += " (" + "; ".join(f"{f}: {d}" for f, d in self.field_violations) + ")"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r})"
        )


class InvalidArgument(ForwarderError):
    """The request was rejected as invalid; see :attr:`field_violations`."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ForwarderError):
    """The named integration (or event) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ForwarderError):
    """The thing being created already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(ForwarderError):
    """The system is not in a state the call needs."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ForwarderError):
    """The bearer token is missing, malformed or unknown."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ForwarderError):
    """The token is valid but lacks the role the call needs (admin or ingest)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(ForwarderError):
    """The server is shedding load; wait :attr:`retry_delay` before trying again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ForwarderError):
    """The server (or a dependency such as Vault) cannot serve the call right now."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ForwarderError):
    """The call's deadline passed before it completed."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ForwarderError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


class Unimplemented(ForwarderError):
    """The server does not offer this RPC (an older or different server)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(ForwarderError):
    """The server failed in a way the caller cannot fix."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: Final[dict[grpc.StatusCode, type[ForwarderError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.UNIMPLEMENTED: Unimplemented,
}


def _details_trailer(metadata: Sequence[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def error_from_rpc(error: grpc.RpcError, *, method: str = "") -> ForwarderError:
    """The :class:`ForwarderError` subclass for a failed call, details kept for lazy parsing."""
    call: _RpcErrorLike = cast(_RpcErrorLike, error)  # Both flavours implement grpc.Call.
    try:
        code = call.code()
        details = call.details() or ""
        trailer = _details_trailer(call.trailing_metadata())
    except AttributeError:  # A bare RpcError (no call attached) carries nothing more.
        code, details, trailer = grpc.StatusCode.UNKNOWN, str(error), None
    cls = _BY_CODE.get(code, InternalError)
    return cls(details, code=code, method=method, status_details=trailer)
