"""Python client of the Elido -> Klaviyo forwarder.

>>> from client import ClientConfig, AsyncForwarderClient
>>> async with AsyncForwarderClient(ClientConfig.from_env()) as fwd:
...     await fwd.forward_click(click)

Messages are the generated ones: ``from elido.forwarder.v1 import forwarder_pb2``.
"""

from client._client import AsyncForwarderClient
from client._config import ClientConfig, TlsConfig
from client._exceptions import (
    AlreadyExists,
    Cancelled,
    ClientError,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    ForwarderError,
    InternalError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from client._requests import integration_settings
from client._retry import RetryPolicy
from client._streaming import StreamSettings
from client._sync import ForwarderClient

__all__ = [
    "AlreadyExists",
    "AsyncForwarderClient",
    "Cancelled",
    "ClientConfig",
    "ClientError",
    "ConfigError",
    "DeadlineExceeded",
    "FailedPrecondition",
    "ForwarderClient",
    "ForwarderError",
    "InternalError",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "StreamSettings",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "integration_settings",
]
