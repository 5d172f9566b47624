"""API errors and their wire form: canonical codes with ``google.rpc.Status`` details.

Handlers raise :class:`ApiError`; :func:`abort` turns one into a status whose details carry
``google.rpc.ErrorInfo`` (always, with a stable reason in :data:`DOMAIN`), ``BadRequest``
field violations for bad input, and ``RetryInfo`` when the caller should back off. Messages
are written for the caller and never include secrets.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN: Final = "forwarder.elido.io"


class Reason(enum.StrEnum):
    """Stable ``ErrorInfo.reason`` values; clients may switch on them."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    INTEGRATION_NOT_FOUND = "INTEGRATION_NOT_FOUND"
    VAULT_UNAVAILABLE = "VAULT_UNAVAILABLE"
    VAULT_DENIED = "VAULT_DENIED"
    KEY_REJECTED = "KEY_REJECTED"
    KEY_SCOPE_MISSING = "KEY_SCOPE_MISSING"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE"
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    STREAM_IDLE = "STREAM_IDLE"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True, slots=True)
class Violation:
    """One invalid field: its path in the request and why."""

    field: str
    description: str


@dataclass(slots=True)
class ApiError(Exception):
    """An error answered to the caller with rich status details."""

    code: grpc.StatusCode
    message: str
    reason: Reason
    violations: Sequence[Violation] = ()
    retry_after_s: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def to_status(self) -> grpc.Status:
        """The ``grpc.Status`` with details, ready for ``context.abort_with_status``."""
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(reason=self.reason.value, domain=DOMAIN)
        info.metadata.update(self.metadata)
        details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_s is not None:
            delay = duration_pb2.Duration()
            delay.FromMilliseconds(int(self.retry_after_s * 1000))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        status = status_pb2.Status(
            code=getattr(code_pb2, self.code.name), message=self.message, details=details
        )
        return rpc_status.to_status(status)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]  # protobuf's Pack takes any Message.
    return packed


def invalid_argument(violations: Sequence[Violation], what: str = "request") -> ApiError:
    """``INVALID_ARGUMENT`` naming every bad field."""
    fields = ", ".join(v.field for v in violations[:5])
    more = f" and {len(violations) - 5} more" if len(violations) > 5 else ""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid {what}: {fields}{more}",
        Reason.INVALID_ARGUMENT,
        violations=violations,
    )


def not_found(workspace_id: str) -> ApiError:
    """``NOT_FOUND`` for a workspace without integration."""
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"workspace {workspace_id!r} has no integration",
        Reason.INTEGRATION_NOT_FOUND,
        metadata={"workspace_id": workspace_id},
    )


def key_rejected(status: int | None) -> ApiError:
    """``INVALID_ARGUMENT`` for a private key Klaviyo does not know; nothing was stored."""
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "Klaviyo does not know this private key; nothing was stored",
        Reason.KEY_REJECTED,
        violations=[
            Violation(
                "private_key",
                f"Klaviyo does not know this key (HTTP {status}); copy it again or create a "
                "new private key",
            )
        ],
        metadata={"klaviyo_status": str(status)},
    )


def key_scope_missing(status: int | None) -> ApiError:
    """``FAILED_PRECONDITION`` for a valid key without ``events:write``; nothing was stored."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "the private key lacks the events:write scope; add it in Klaviyo and register again. "
        "Nothing was stored",
        Reason.KEY_SCOPE_MISSING,
        metadata={"missing_scope": "events:write", "klaviyo_status": str(status)},
    )


def store_unavailable(retry_after_s: float = 1.0) -> ApiError:
    """``UNAVAILABLE`` with ``RetryInfo`` when the store could not commit; nothing changed."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        "the store could not commit; nothing was taken, retry",
        Reason.STORE_UNAVAILABLE,
        retry_after_s=retry_after_s,
    )


def vault_unavailable(retry_after_s: float = 5.0) -> ApiError:
    """``UNAVAILABLE`` with ``RetryInfo`` while Vault cannot be reached."""
    return ApiError(
        grpc.StatusCode.UNAVAILABLE,
        "the key vault is unavailable; retry later",
        Reason.VAULT_UNAVAILABLE,
        retry_after_s=retry_after_s,
    )


async def abort(context: grpc.aio.ServicerContext[object, object], error: ApiError) -> NoReturn:
    """End the RPC with ``error``'s status and details."""
    status = error.to_status()
    # abort() with the status's trailers is abort_with_status(), in the form grpc-stubs types.
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned")  # pragma: no cover - grpc always raises
