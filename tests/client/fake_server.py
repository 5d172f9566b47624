"""An in-test forwarder: real grpc.aio on 127.0.0.1:0, rich errors, scripted failures.

Stands in for the server while it is being written. It keeps state in memory (integrations,
clicks, conversions, failed events), checks bearer tokens and roles, validates a little, and
answers errors the way the real server does: canonical code plus ``google.rpc.Status`` with
``BadRequest`` / ``ErrorInfo`` / ``RetryInfo``. Every call is counted, and failures can be
queued per method to test the client's retries.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from elido.forwarder.v1 import forwarder_pb2 as pb
from elido.forwarder.v1 import forwarder_pb2_grpc as pb_grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

ADMIN_TOKEN = "admin-token-0123456789"
INGEST_TOKEN = "ingest-token-0123456789"
_ROLES = {ADMIN_TOKEN: "admin", INGEST_TOKEN: "ingest"}
_WORKSPACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_KEY_RE = re.compile(r"pk_[A-Za-z0-9]{16,128}")


@dataclass(frozen=True)
class Failure:
    """An error the fake answers instead of doing the work."""

    code: grpc.StatusCode
    message: str = "scripted failure"
    reason: str = ""
    violations: Sequence[tuple[str, str]] = ()
    retry_delay_s: float | None = None


def abort_status(failure: Failure) -> grpc.Status:
    status = status_pb2.Status(code=getattr(code_pb2, failure.code.name), message=failure.message)
    details: list[Any] = []
    if failure.violations:
        details.append(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in failure.violations
                ]
            )
        )
    if failure.reason:
        details.append(
            error_details_pb2.ErrorInfo(reason=failure.reason, domain="forwarder.elido.io")
        )
    if failure.retry_delay_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(failure.retry_delay_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


@dataclass
class StreamBehaviour:
    """How StreamClicks misbehaves: hold acks, or drop the stream once after some batches."""

    hold_acks: asyncio.Event | None = None
    fail_once_after_batches: int | None = None
    failure: Failure = field(
        default_factory=lambda: Failure(grpc.StatusCode.UNAVAILABLE, "stream dropped")
    )


class FakeForwarder(pb_grpc.ForwarderServiceServicer):
    def __init__(self) -> None:
        self.calls: dict[str, int] = defaultdict(int)
        self.requests: dict[str, list[Any]] = defaultdict(list)
        self.metadata: list[dict[str, str]] = []
        self.script: dict[str, deque[Failure]] = defaultdict(deque)
        self.integrations: dict[str, pb.Integration] = {}
        self.clicks: dict[tuple[str, str], pb.Click] = {}
        self.conversions: dict[tuple[str, str], pb.Conversion] = {}
        self.failed: dict[str, list[pb.FailedEvent]] = defaultdict(list)
        self.stream = StreamBehaviour()
        self.batches_received = 0
        self.streams_opened = 0

    def fail(self, method: str, *failures: Failure) -> None:
        """Makes the next calls of ``method`` fail, one failure per call."""
        self.script[method].extend(failures)

    async def _enter(self, method: str, request: Any, context: Any, role: str) -> None:
        self.calls[method] += 1
        self.requests[method].append(request)
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.metadata.append(metadata)
        if self.script[method]:
            await self._abort(context, self.script[method].popleft())
        auth = metadata.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in _ROLES:
            await self._abort(
                context,
                Failure(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "missing or unknown bearer token",
                    reason="UNAUTHENTICATED",
                ),
            )
        if _ROLES[auth[7:]] != role:
            await self._abort(
                context,
                Failure(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"this call needs the {role} role",
                    reason="PERMISSION_DENIED",
                ),
            )

    @staticmethod
    async def _abort(context: Any, failure: Failure) -> None:
        status = abort_status(failure)
        await context.abort(status.code, status.details, trailing_metadata=status.trailing_metadata)

    async def _invalid(self, context: Any, field_name: str, description: str) -> None:
        await self._abort(
            context,
            Failure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid {field_name}",
                reason="INVALID_ARGUMENT",
                violations=[(field_name, description)],
            ),
        )

    async def _integration(self, workspace_id: str, context: Any) -> pb.Integration:
        if workspace_id not in self.integrations:
            await self._abort(
                context,
                Failure(
                    grpc.StatusCode.NOT_FOUND,
                    f"no integration for workspace {workspace_id}",
                    reason="INTEGRATION_NOT_FOUND",
                ),
            )
        return self.integrations[workspace_id]

    async def RegisterIntegration(
        self, request: pb.RegisterIntegrationRequest, context: Any
    ) -> pb.RegisterIntegrationResponse:
        await self._enter("RegisterIntegration", request, context, "admin")
        if not _WORKSPACE_RE.fullmatch(request.workspace_id):
            await self._invalid(context, "workspace_id", "must be 1-64 of [A-Za-z0-9_.-]")
        if not _KEY_RE.fullmatch(request.private_key):
            await self._invalid(context, "private_key", "is not a Klaviyo private key (pk_...)")
        if len(request.settings.click_metric_name) >= 128:
            await self._invalid(
                context, "settings.click_metric_name", "must be under 128 characters"
            )
        settings = pb.IntegrationSettings()
        settings.CopyFrom(request.settings)
        settings.click_metric_name = settings.click_metric_name or "Elido Link Clicked"
        settings.conversion_metric_name = settings.conversion_metric_name or "Elido Conversion"
        if not settings.email_parameters:
            settings.email_parameters.extend(["email", "utm_email", "elido_email"])
        if not settings.HasField("backfill_after"):
            settings.backfill_after.FromSeconds(86400)
        replaced = request.workspace_id in self.integrations
        integration = pb.Integration(
            workspace_id=request.workspace_id,
            key_fingerprint=f"pk_…{request.private_key[-4:]}",
            state=pb.INTEGRATION_STATE_ACTIVE,
            settings=settings,
            key_version=1,
        )
        integration.create_time.FromSeconds(1_790_000_000)
        integration.update_time.FromSeconds(1_790_000_000)
        self.integrations[request.workspace_id] = integration
        return pb.RegisterIntegrationResponse(integration=integration, replaced=replaced)

    async def RemoveIntegration(
        self, request: pb.RemoveIntegrationRequest, context: Any
    ) -> pb.RemoveIntegrationResponse:
        await self._enter("RemoveIntegration", request, context, "admin")
        integration = await self._integration(request.workspace_id, context)
        del self.integrations[request.workspace_id]
        return pb.RemoveIntegrationResponse(dropped_event_count=integration.delivery.queued_count)

    async def GetIntegration(
        self, request: pb.GetIntegrationRequest, context: Any
    ) -> pb.GetIntegrationResponse:
        await self._enter("GetIntegration", request, context, "admin")
        return pb.GetIntegrationResponse(
            integration=await self._integration(request.workspace_id, context)
        )

    async def ListIntegrations(
        self, request: pb.ListIntegrationsRequest, context: Any
    ) -> pb.ListIntegrationsResponse:
        await self._enter("ListIntegrations", request, context, "admin")
        size = request.page_size or 100
        ids = sorted(w for w in self.integrations if w > request.page_token)
        page = ids[:size]
        return pb.ListIntegrationsResponse(
            integrations=[self.integrations[w] for w in page],
            next_page_token=page[-1] if len(ids) > size else "",
        )

    async def RewrapKeys(
        self, request: pb.RewrapKeysRequest, context: Any
    ) -> pb.RewrapKeysResponse:
        await self._enter("RewrapKeys", request, context, "admin")
        targets = [request.workspace_id] if request.workspace_id else list(self.integrations)
        return pb.RewrapKeysResponse(rewrapped_count=len(targets), unchanged_count=0)

    async def VerifyIntegrationKey(
        self, request: pb.VerifyIntegrationKeyRequest, context: Any
    ) -> pb.VerifyIntegrationKeyResponse:
        await self._enter("VerifyIntegrationKey", request, context, "admin")
        response = pb.VerifyIntegrationKeyResponse(verdict=pb.KEY_CHECK_VERDICT_VALID)
        if request.HasField("test_event_profile"):
            response.test_event.CopyFrom(pb.TestEvent(unique_id="elido-test-1", accepted=True))
        return response

    async def _take_click(self, click: pb.Click) -> pb.ClickDisposition.ValueType:
        key = (click.workspace_id, click.click_id)
        if key in self.clicks:
            return pb.CLICK_DISPOSITION_DUPLICATE
        self.clicks[key] = click
        if click.workspace_id not in self.integrations:
            return pb.CLICK_DISPOSITION_NO_INTEGRATION
        ids = click.identifiers
        if not (
            ids.email
            or ids.phone_number
            or ids.external_id
            or ids.kx
            or "email=" in click.destination_url
        ):
            return pb.CLICK_DISPOSITION_ANONYMOUS
        return pb.CLICK_DISPOSITION_QUEUED

    async def ForwardClick(
        self, request: pb.ForwardClickRequest, context: Any
    ) -> pb.ForwardClickResponse:
        await self._enter("ForwardClick", request, context, "ingest")
        if not request.click.click_id:
            await self._invalid(context, "click.click_id", "is required")
        if not request.click.workspace_id:
            await self._invalid(context, "click.workspace_id", "is required")
        return pb.ForwardClickResponse(disposition=await self._take_click(request.click))

    async def StreamClicks(
        self, request_iterator: AsyncIterator[pb.StreamClicksRequest], context: Any
    ) -> AsyncIterator[pb.StreamClicksResponse]:
        await self._enter("StreamClicks", None, context, "ingest")
        self.streams_opened += 1
        async for request in request_iterator:
            self.batches_received += 1
            self.requests["StreamClicks"].append(request)
            behaviour = self.stream
            if behaviour.fail_once_after_batches == self.batches_received:
                behaviour.fail_once_after_batches = None
                await self._abort(context, behaviour.failure)
            if behaviour.hold_acks is not None:
                await behaviour.hold_acks.wait()
            results = []
            for click in request.clicks:
                if not click.click_id:
                    results.append(
                        pb.ClickResult(
                            disposition=pb.CLICK_DISPOSITION_REJECTED,
                            field_violations=[
                                pb.FieldViolation(field="click_id", description="is required")
                            ],
                        )
                    )
                    continue
                results.append(
                    pb.ClickResult(
                        click_id=click.click_id, disposition=await self._take_click(click)
                    )
                )
            yield pb.StreamClicksResponse(batch_id=request.batch_id, results=results)

    async def ForwardConversion(
        self, request: pb.ForwardConversionRequest, context: Any
    ) -> pb.ForwardConversionResponse:
        await self._enter("ForwardConversion", request, context, "ingest")
        conversion = request.conversion
        if conversion.value and not conversion.currency:
            await self._invalid(context, "conversion.currency", "is required when value is set")
        key = (conversion.workspace_id, conversion.conversion_id)
        if key in self.conversions:
            return pb.ForwardConversionResponse(disposition=pb.CONVERSION_DISPOSITION_DUPLICATE)
        self.conversions[key] = conversion
        if conversion.workspace_id not in self.integrations:
            disposition = pb.CONVERSION_DISPOSITION_NO_INTEGRATION
        elif (conversion.workspace_id, conversion.click_id) in self.clicks:
            disposition = pb.CONVERSION_DISPOSITION_QUEUED
        else:
            disposition = pb.CONVERSION_DISPOSITION_UNATTRIBUTED
        return pb.ForwardConversionResponse(disposition=disposition)

    async def ListFailedEvents(
        self, request: pb.ListFailedEventsRequest, context: Any
    ) -> pb.ListFailedEventsResponse:
        await self._enter("ListFailedEvents", request, context, "admin")
        events = self.failed[request.workspace_id]
        start = int(request.page_token or 0)
        size = request.page_size or 100
        page = events[start : start + size]
        more = start + size < len(events)
        return pb.ListFailedEventsResponse(
            failed_events=page, next_page_token=str(start + size) if more else ""
        )

    async def ReplayFailedEvents(
        self, request: pb.ReplayFailedEventsRequest, context: Any
    ) -> pb.ReplayFailedEventsResponse:
        await self._enter("ReplayFailedEvents", request, context, "admin")
        events = self.failed[request.workspace_id]
        if request.all:
            chosen = list(events)
        else:
            known = {e.event_id for e in events}
            for index, event_id in enumerate(request.event_ids):
                if event_id not in known:
                    await self._invalid(context, f"event_ids[{index}]", "no such failed event")
            chosen = [e for e in events if e.event_id in set(request.event_ids)]
        self.failed[request.workspace_id] = [e for e in events if e not in chosen]
        return pb.ReplayFailedEventsResponse(replayed_count=len(chosen))


@dataclass
class RunningFake:
    servicer: FakeForwarder
    health: Any
    server: grpc.aio.Server
    target: str


async def start_fake() -> RunningFake:
    server = grpc.aio.server()
    servicer = FakeForwarder()
    pb_grpc.add_ForwarderServiceServicer_to_server(servicer, server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return RunningFake(servicer, health_servicer, server, f"127.0.0.1:{port}")
