"""The asyncio client of the forwarder API.

One method per RPC. Each takes the generated request message or convenient plain arguments,
returns the generated response message, runs under a deadline (``timeout_s``, default
``ClientConfig.default_timeout_s``, covering retries and their waits) and raises a
:class:`~client._exceptions.ForwarderError` subclass on failure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc.aio
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import _requests
from client._channel import call_metadata, open_aio_channel
from client._config import ClientConfig
from client._retry import call_async
from client._streaming import StreamCall, StreamSettings, stream_clicks

_Resp = TypeVar("_Resp")


class AsyncForwarderClient:
    """An asyncio client; use as ``async with AsyncForwarderClient(config) as client:``.

    Pass ``channel`` to share one channel between clients (it is then not closed by
    :meth:`close`).
    """

    def __init__(self, config: ClientConfig, *, channel: grpc.aio.Channel | None = None) -> None:
        self._config = config
        self._owns_channel = channel is None
        self._channel = open_aio_channel(config) if channel is None else channel
        # The stub class is the same at run time; its .pyi overload types it for grpc.aio.
        self._stub = pb_grpc.ForwarderServiceStub(self._channel)
        self._metadata = call_metadata(config)

    @property
    def config(self) -> ClientConfig:
        return self._config

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel if this client opened it."""
        if self._owns_channel:
            await self._channel.close(None)

    async def _unary(
        self,
        method: str,
        rpc: Callable[..., Awaitable[_Resp]],
        request: Any,
        timeout_s: float | None,
        *,
        idempotent: bool = True,
    ) -> _Resp:
        async def attempt(remaining_s: float | None) -> _Resp:
            return await rpc(request, timeout=remaining_s, metadata=self._metadata)

        return await call_async(
            attempt,
            policy=self._config.retry,
            method=method,
            timeout_s=self._config.default_timeout_s if timeout_s is None else timeout_s,
            idempotent=idempotent,
        )

    async def register_integration(
        self,
        workspace_id: str | pb.RegisterIntegrationRequest,
        private_key: str | None = None,
        settings: pb.IntegrationSettings | None = None,
        *,
        timeout_s: float | None = None,
    ) -> pb.RegisterIntegrationResponse:
        """Connects a workspace to Klaviyo, or replaces its key and settings.

        Retried when safe: registering the same key twice is a replacement with itself.
        """
        request = _requests.register(workspace_id, private_key, settings)
        return await self._unary(
            "RegisterIntegration", self._stub.RegisterIntegration, request, timeout_s
        )

    async def remove_integration(
        self, workspace_id: str | pb.RemoveIntegrationRequest, *, timeout_s: float | None = None
    ) -> pb.RemoveIntegrationResponse:
        """Disconnects a workspace, destroying its key. Raises NotFound if there is none.

        Retried only on errors with ``RetryInfo``: after a bare ``UNAVAILABLE`` the first
        attempt may have removed it, and a retry would report a misleading NOT_FOUND.
        """
        return await self._unary(
            "RemoveIntegration",
            self._stub.RemoveIntegration,
            _requests.remove(workspace_id),
            timeout_s,
            idempotent=False,
        )

    async def get_integration(
        self, workspace_id: str | pb.GetIntegrationRequest, *, timeout_s: float | None = None
    ) -> pb.GetIntegrationResponse:
        """One integration's settings and delivery status."""
        return await self._unary(
            "GetIntegration", self._stub.GetIntegration, _requests.get(workspace_id), timeout_s
        )

    async def list_integrations(
        self,
        request: pb.ListIntegrationsRequest | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> pb.ListIntegrationsResponse:
        """One page of integrations, ordered by workspace id."""
        return await self._unary(
            "ListIntegrations",
            self._stub.ListIntegrations,
            _requests.list_integrations(request, page_size, page_token),
            timeout_s,
        )

    async def iter_integrations(
        self, *, page_size: int = 0, timeout_s: float | None = None
    ) -> AsyncIterator[pb.Integration]:
        """Every integration, fetching pages as needed (each page under its own deadline)."""
        token = ""
        while True:
            page = await self.list_integrations(
                page_size=page_size, page_token=token, timeout_s=timeout_s
            )
            for integration in page.integrations:
                yield integration
            token = page.next_page_token
            if not token:
                return

    async def rewrap_keys(
        self, workspace_id: str | pb.RewrapKeysRequest = "", *, timeout_s: float | None = None
    ) -> pb.RewrapKeysResponse:
        """Rewraps stored key ciphertexts to the newest transit key version ("" = all)."""
        return await self._unary(
            "RewrapKeys", self._stub.RewrapKeys, _requests.rewrap(workspace_id), timeout_s
        )

    async def verify_integration_key(
        self,
        workspace_id: str | pb.VerifyIntegrationKeyRequest,
        test_event_profile: pb.ProfileIdentifiers | None = None,
        *,
        timeout_s: float | None = None,
    ) -> pb.VerifyIntegrationKeyResponse:
        """Checks the stored key against Klaviyo again; optionally sends a test event.

        Retried when safe: a check alone changes nothing Klaviyo-side, but a retry after a
        bare ``UNAVAILABLE`` could send a second test event, so calls with one are not.
        """
        request = _requests.verify(workspace_id, test_event_profile)
        return await self._unary(
            "VerifyIntegrationKey",
            self._stub.VerifyIntegrationKey,
            request,
            timeout_s,
            idempotent=not request.HasField("test_event_profile"),
        )

    async def forward_click(
        self, click: pb.Click | pb.ForwardClickRequest, *, timeout_s: float | None = None
    ) -> pb.ForwardClickResponse:
        """Reports one click; retried safely because the server dedupes on ``click_id``."""
        return await self._unary(
            "ForwardClick", self._stub.ForwardClick, _requests.forward_click(click), timeout_s
        )

    async def forward_conversion(
        self,
        conversion: pb.Conversion | pb.ForwardConversionRequest,
        *,
        timeout_s: float | None = None,
    ) -> pb.ForwardConversionResponse:
        """Reports a conversion; retried safely (the server dedupes on ``conversion_id``)."""
        return await self._unary(
            "ForwardConversion",
            self._stub.ForwardConversion,
            _requests.forward_conversion(conversion),
            timeout_s,
        )

    async def list_failed_events(
        self,
        workspace_id: str | pb.ListFailedEventsRequest,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> pb.ListFailedEventsResponse:
        """One page of a workspace's failed events, oldest first."""
        return await self._unary(
            "ListFailedEvents",
            self._stub.ListFailedEvents,
            _requests.list_failed(workspace_id, page_size, page_token),
            timeout_s,
        )

    async def iter_failed_events(
        self, workspace_id: str, *, page_size: int = 0, timeout_s: float | None = None
    ) -> AsyncIterator[pb.FailedEvent]:
        """Every failed event of a workspace, fetching pages as needed."""
        token = ""
        while True:
            page = await self.list_failed_events(
                workspace_id, page_size=page_size, page_token=token, timeout_s=timeout_s
            )
            for event in page.failed_events:
                yield event
            token = page.next_page_token
            if not token:
                return

    async def replay_failed_events(
        self,
        workspace_id: str | pb.ReplayFailedEventsRequest,
        event_ids: Iterable[str] = (),
        *,
        all_events: bool = False,
        failed_after: dt.datetime | None = None,
        failed_before: dt.datetime | None = None,
        error_contains: str = "",
        kind: pb.EventKind.ValueType = pb.EVENT_KIND_UNSPECIFIED,
        dry_run: bool = False,
        timeout_s: float | None = None,
    ) -> pb.ReplayFailedEventsResponse:
        """Requeues failed events: the named ones, those matching the filters (failed
        between ``failed_after`` and ``failed_before``, last error containing
        ``error_contains``, of ``kind``), or all of them with ``all_events=True``. With
        ``dry_run`` nothing changes and ``replayed_count`` says how many would be requeued.

        Retried safely: replaying twice requeues events Klaviyo dedupes on ``unique_id``.
        """
        return await self._unary(
            "ReplayFailedEvents",
            self._stub.ReplayFailedEvents,
            _requests.replay(
                workspace_id,
                event_ids,
                all_events,
                failed_after=failed_after,
                failed_before=failed_before,
                error_contains=error_contains,
                kind=kind,
                dry_run=dry_run,
            ),
            timeout_s,
        )

    async def list_audit_events(
        self,
        workspace_id: str | pb.ListAuditEventsRequest = "",
        *,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> pb.ListAuditEventsResponse:
        """One page of the audit trail, newest first: one workspace's entries (``""``: all),
        between ``start_time`` (inclusive) and ``end_time``."""
        return await self._unary(
            "ListAuditEvents",
            self._stub.ListAuditEvents,
            _requests.list_audit(workspace_id, start_time, end_time, page_size, page_token),
            timeout_s,
        )

    async def iter_audit_events(
        self,
        workspace_id: str = "",
        *,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
        timeout_s: float | None = None,
    ) -> AsyncIterator[pb.AuditEvent]:
        """Every matching audit entry, newest first, fetching pages as needed."""
        token = ""
        while True:
            page = await self.list_audit_events(
                workspace_id,
                start_time=start_time,
                end_time=end_time,
                page_size=page_size,
                page_token=token,
                timeout_s=timeout_s,
            )
            for event in page.audit_events:
                yield event
            token = page.next_page_token
            if not token:
                return

    async def erase_personal_data(
        self,
        workspace_id: str | pb.ErasePersonalDataRequest,
        *,
        emails: Iterable[str] = (),
        phone_numbers: Iterable[str] = (),
        external_ids: Iterable[str] = (),
        kxs: Iterable[str] = (),
        all_workspaces: bool = False,
        timeout_s: float | None = None,
    ) -> pb.ErasePersonalDataResponse:
        """Erases a person's click-index entries and undelivered events in one workspace
        (or, with ``workspace_id=""`` and ``all_workspaces=True``, in all).

        Retried safely: a repeated erasure deletes nothing more.
        """
        return await self._unary(
            "ErasePersonalData",
            self._stub.ErasePersonalData,
            _requests.erase(
                workspace_id,
                emails=emails,
                phone_numbers=phone_numbers,
                external_ids=external_ids,
                kxs=kxs,
                all_workspaces=all_workspaces,
            ),
            timeout_s,
        )

    def stream_clicks(
        self,
        clicks: AsyncIterable[pb.Click],
        *,
        batch_size: int = 500,
        max_in_flight: int = 8,
        linger_s: float = 0.01,
        ack_timeout_s: float | None = None,
    ) -> AsyncIterator[pb.StreamClicksResponse]:
        """Streams ``clicks`` through StreamClicks, yielding one ack per batch.

        See :mod:`client._streaming` for batching, back-pressure and reconnection.
        ``ack_timeout_s`` defaults to the config's ``default_timeout_s``.
        """
        settings = StreamSettings(
            batch_size=batch_size,
            max_in_flight=max_in_flight,
            linger_s=linger_s,
            ack_timeout_s=self._config.default_timeout_s
            if ack_timeout_s is None
            else ack_timeout_s,
        )

        def open_stream() -> StreamCall:
            # No request iterator: the streamer writes batches itself, as acks free the window.
            return self._stub.StreamClicks(None, metadata=self._metadata)

        return stream_clicks(open_stream, clicks, settings=settings, retry=self._config.retry)

    async def check_health(self, service: str = "", *, timeout_s: float | None = None) -> int:
        """The ``grpc.health.v1`` serving status (``HealthCheckResponse.ServingStatus``)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        response = await self._unary(
            "Health.Check",
            stub.Check,
            health_pb2.HealthCheckRequest(service=service),
            timeout_s,
        )
        return int(response.status)
