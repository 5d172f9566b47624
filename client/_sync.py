"""The blocking client of the forwarder API: :class:`AsyncForwarderClient` for threads.

Same methods, arguments, deadlines, retries and exceptions as the asyncio client (streaming
excepted: the click stream's back-pressure needs an event loop; use the async client).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import _requests
from client._channel import call_metadata, open_sync_channel
from client._config import ClientConfig
from client._retry import call_sync

_Resp = TypeVar("_Resp")


class ForwarderClient:
    """A blocking client; use as ``with ForwarderClient(config) as client:``.

    Pass ``channel`` to share one channel (it is then not closed by :meth:`close`).
    """

    def __init__(self, config: ClientConfig, *, channel: grpc.Channel | None = None) -> None:
        self._config = config
        self._owns_channel = channel is None
        self._channel = open_sync_channel(config) if channel is None else channel
        self._stub = pb_grpc.ForwarderServiceStub(self._channel)
        self._metadata = call_metadata(config)

    @property
    def config(self) -> ClientConfig:
        return self._config

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel if this client opened it."""
        if self._owns_channel:
            self._channel.close()

    def _unary(
        self,
        method: str,
        rpc: Callable[..., _Resp],
        request: Any,
        timeout_s: float | None,
        *,
        idempotent: bool = True,
    ) -> _Resp:
        def attempt(remaining_s: float | None) -> _Resp:
            return rpc(request, timeout=remaining_s, metadata=self._metadata)

        return call_sync(
            attempt,
            policy=self._config.retry,
            method=method,
            timeout_s=self._config.default_timeout_s if timeout_s is None else timeout_s,
            idempotent=idempotent,
        )

    def register_integration(
        self,
        workspace_id: str | pb.RegisterIntegrationRequest,
        private_key: str | None = None,
        settings: pb.IntegrationSettings | None = None,
        *,
        timeout_s: float | None = None,
    ) -> pb.RegisterIntegrationResponse:
        """Connects a workspace to Klaviyo, or replaces its key and settings."""
        request = _requests.register(workspace_id, private_key, settings)
        return self._unary(
            "RegisterIntegration", self._stub.RegisterIntegration, request, timeout_s
        )

    def remove_integration(
        self, workspace_id: str | pb.RemoveIntegrationRequest, *, timeout_s: float | None = None
    ) -> pb.RemoveIntegrationResponse:
        """Disconnects a workspace (retried only on errors carrying ``RetryInfo``)."""
        return self._unary(
            "RemoveIntegration",
            self._stub.RemoveIntegration,
            _requests.remove(workspace_id),
            timeout_s,
            idempotent=False,
        )

    def get_integration(
        self, workspace_id: str | pb.GetIntegrationRequest, *, timeout_s: float | None = None
    ) -> pb.GetIntegrationResponse:
        """One integration's settings and delivery status."""
        return self._unary(
            "GetIntegration", self._stub.GetIntegration, _requests.get(workspace_id), timeout_s
        )

    def list_integrations(
        self,
        request: pb.ListIntegrationsRequest | None = None,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> pb.ListIntegrationsResponse:
        """One page of integrations, ordered by workspace id."""
        return self._unary(
            "ListIntegrations",
            self._stub.ListIntegrations,
            _requests.list_integrations(request, page_size, page_token),
            timeout_s,
        )

    def iter_integrations(
        self, *, page_size: int = 0, timeout_s: float | None = None
    ) -> Iterator[pb.Integration]:
        """Every integration, fetching pages as needed."""
        token = ""
        while True:
            page = self.list_integrations(
                page_size=page_size, page_token=token, timeout_s=timeout_s
            )
            yield from page.integrations
            token = page.next_page_token
            if not token:
                return

    def rewrap_keys(
        self, workspace_id: str | pb.RewrapKeysRequest = "", *, timeout_s: float | None = None
    ) -> pb.RewrapKeysResponse:
        """Rewraps stored key ciphertexts to the newest transit key version ("" = all)."""
        return self._unary(
            "RewrapKeys", self._stub.RewrapKeys, _requests.rewrap(workspace_id), timeout_s
        )

    def verify_integration_key(
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
        return self._unary(
            "VerifyIntegrationKey",
            self._stub.VerifyIntegrationKey,
            request,
            timeout_s,
            idempotent=not request.HasField("test_event_profile"),
        )

    def forward_click(
        self, click: pb.Click | pb.ForwardClickRequest, *, timeout_s: float | None = None
    ) -> pb.ForwardClickResponse:
        """Reports one click (idempotent on ``click_id``)."""
        return self._unary(
            "ForwardClick", self._stub.ForwardClick, _requests.forward_click(click), timeout_s
        )

    def forward_conversion(
        self,
        conversion: pb.Conversion | pb.ForwardConversionRequest,
        *,
        timeout_s: float | None = None,
    ) -> pb.ForwardConversionResponse:
        """Reports a conversion (idempotent on ``conversion_id``)."""
        return self._unary(
            "ForwardConversion",
            self._stub.ForwardConversion,
            _requests.forward_conversion(conversion),
            timeout_s,
        )

    def list_failed_events(
        self,
        workspace_id: str | pb.ListFailedEventsRequest,
        *,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> pb.ListFailedEventsResponse:
        """One page of a workspace's failed events, oldest first."""
        return self._unary(
            "ListFailedEvents",
            self._stub.ListFailedEvents,
            _requests.list_failed(workspace_id, page_size, page_token),
            timeout_s,
        )

    def iter_failed_events(
        self, workspace_id: str, *, page_size: int = 0, timeout_s: float | None = None
    ) -> Iterator[pb.FailedEvent]:
        """Every failed event of a workspace, fetching pages as needed."""
        token = ""
        while True:
            page = self.list_failed_events(
                workspace_id, page_size=page_size, page_token=token, timeout_s=timeout_s
            )
            yield from page.failed_events
            token = page.next_page_token
            if not token:
                return

    def replay_failed_events(
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
        return self._unary(
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

    def list_audit_events(
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
        return self._unary(
            "ListAuditEvents",
            self._stub.ListAuditEvents,
            _requests.list_audit(workspace_id, start_time, end_time, page_size, page_token),
            timeout_s,
        )

    def iter_audit_events(
        self,
        workspace_id: str = "",
        *,
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
        timeout_s: float | None = None,
    ) -> Iterator[pb.AuditEvent]:
        """Every matching audit entry, newest first, fetching pages as needed."""
        token = ""
        while True:
            page = self.list_audit_events(
                workspace_id,
                start_time=start_time,
                end_time=end_time,
                page_size=page_size,
                page_token=token,
                timeout_s=timeout_s,
            )
            yield from page.audit_events
            token = page.next_page_token
            if not token:
                return

    def erase_personal_data(
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
        return self._unary(
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

    def check_health(self, service: str = "", *, timeout_s: float | None = None) -> int:
        """The ``grpc.health.v1`` serving status (``HealthCheckResponse.ServingStatus``)."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        response = self._unary(
            "Health.Check", stub.Check, health_pb2.HealthCheckRequest(service=service), timeout_s
        )
        return int(response.status)
