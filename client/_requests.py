"""Building request messages from the clients' convenience arguments.

Both clients accept either a ready request message or plain arguments; the conversion lives
here once so that the async and the blocking client cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from elido.forwarder.v1 import forwarder_pb2 as pb

from client._exceptions import ClientError


def integration_settings(
    *,
    click_metric_name: str = "",
    conversion_metric_name: str = "",
    email_parameters: Iterable[str] = (),
    backfill_after: dt.timedelta | None = None,
) -> pb.IntegrationSettings:
    """An ``IntegrationSettings`` message; unset arguments take the server's defaults."""
    settings = pb.IntegrationSettings(
        click_metric_name=click_metric_name,
        conversion_metric_name=conversion_metric_name,
        email_parameters=list(email_parameters),
    )
    if backfill_after is not None:
        settings.backfill_after.FromTimedelta(backfill_after)
    return settings


def register(
    workspace_id: str | pb.RegisterIntegrationRequest,
    private_key: str | None,
    settings: pb.IntegrationSettings | None,
) -> pb.RegisterIntegrationRequest:
    if isinstance(workspace_id, pb.RegisterIntegrationRequest):
        if private_key is not None or settings is not None:
            raise ClientError("pass either a request message or keyword arguments, not both")
        return workspace_id
    if private_key is None:
        raise ClientError("register_integration needs the private key")
    request = pb.RegisterIntegrationRequest(workspace_id=workspace_id, private_key=private_key)
    if settings is not None:
        request.settings.CopyFrom(settings)
    return request


def remove(workspace_id: str | pb.RemoveIntegrationRequest) -> pb.RemoveIntegrationRequest:
    if isinstance(workspace_id, pb.RemoveIntegrationRequest):
        return workspace_id
    return pb.RemoveIntegrationRequest(workspace_id=workspace_id)


def get(workspace_id: str | pb.GetIntegrationRequest) -> pb.GetIntegrationRequest:
    if isinstance(workspace_id, pb.GetIntegrationRequest):
        return workspace_id
    return pb.GetIntegrationRequest(workspace_id=workspace_id)


def list_integrations(
    request: pb.ListIntegrationsRequest | None, page_size: int, page_token: str
) -> pb.ListIntegrationsRequest:
    if request is not None:
        return request
    return pb.ListIntegrationsRequest(page_size=page_size, page_token=page_token)


def rewrap(workspace_id: str | pb.RewrapKeysRequest) -> pb.RewrapKeysRequest:
    if isinstance(workspace_id, pb.RewrapKeysRequest):
        return workspace_id
    return pb.RewrapKeysRequest(workspace_id=workspace_id)


def verify(
    workspace_id: str | pb.VerifyIntegrationKeyRequest,
    test_event_profile: pb.ProfileIdentifiers | None,
) -> pb.VerifyIntegrationKeyRequest:
    if isinstance(workspace_id, pb.VerifyIntegrationKeyRequest):
        return workspace_id
    request = pb.VerifyIntegrationKeyRequest(workspace_id=workspace_id)
    if test_event_profile is not None:
        request.test_event_profile.CopyFrom(test_event_profile)
    return request


def forward_click(click: pb.Click | pb.ForwardClickRequest) -> pb.ForwardClickRequest:
    if isinstance(click, pb.ForwardClickRequest):
        return click
    return pb.ForwardClickRequest(click=click)


def forward_conversion(
    conversion: pb.Conversion | pb.ForwardConversionRequest,
) -> pb.ForwardConversionRequest:
    if isinstance(conversion, pb.ForwardConversionRequest):
        return conversion
    return pb.ForwardConversionRequest(conversion=conversion)


def list_failed(
    workspace_id: str | pb.ListFailedEventsRequest, page_size: int, page_token: str
) -> pb.ListFailedEventsRequest:
    if isinstance(workspace_id, pb.ListFailedEventsRequest):
        return workspace_id
    return pb.ListFailedEventsRequest(
        workspace_id=workspace_id, page_size=page_size, page_token=page_token
    )


def replay(
    workspace_id: str | pb.ReplayFailedEventsRequest,
    event_ids: Iterable[str],
    all_events: bool,
    *,
    failed_after: dt.datetime | None = None,
    failed_before: dt.datetime | None = None,
    error_contains: str = "",
    kind: pb.EventKind.ValueType = pb.EVENT_KIND_UNSPECIFIED,
    dry_run: bool = False,
) -> pb.ReplayFailedEventsRequest:
    if isinstance(workspace_id, pb.ReplayFailedEventsRequest):
        return workspace_id
    ids = list(event_ids)
    filtered = bool(failed_after or failed_before or error_contains or kind)
    if all_events and (ids or filtered):
        raise ClientError("replay: all_events=True cannot be combined with event ids or filters")
    if not (all_events or ids or filtered):
        raise ClientError("replay needs event ids, a filter, or all_events=True")
    request = pb.ReplayFailedEventsRequest(
        workspace_id=workspace_id,
        event_ids=ids,
        all=all_events,
        error_contains=error_contains,
        kind=kind,
        dry_run=dry_run,
    )
    if failed_after is not None:
        request.failed_after.FromDatetime(_utc(failed_after))
    if failed_before is not None:
        request.failed_before.FromDatetime(_utc(failed_before))
    return request


def _utc(value: dt.datetime) -> dt.datetime:
    """An aware time in UTC (a naive one is taken as UTC, as the CLI documents)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def erase(
    workspace_id: str | pb.ErasePersonalDataRequest,
    *,
    emails: Iterable[str] = (),
    phone_numbers: Iterable[str] = (),
    external_ids: Iterable[str] = (),
    kxs: Iterable[str] = (),
    all_workspaces: bool = False,
) -> pb.ErasePersonalDataRequest:
    if isinstance(workspace_id, pb.ErasePersonalDataRequest):
        return workspace_id
    if bool(workspace_id) == all_workspaces:
        raise ClientError("erase needs either a workspace id or all_workspaces=True, not both")
    return pb.ErasePersonalDataRequest(
        workspace_id=workspace_id,
        all_workspaces=all_workspaces,
        emails=list(emails),
        phone_numbers=list(phone_numbers),
        external_ids=list(external_ids),
        kxs=list(kxs),
    )


def list_audit(
    workspace_id: str | pb.ListAuditEventsRequest,
    start_time: dt.datetime | None,
    end_time: dt.datetime | None,
    page_size: int,
    page_token: str,
) -> pb.ListAuditEventsRequest:
    if isinstance(workspace_id, pb.ListAuditEventsRequest):
        return workspace_id
    request = pb.ListAuditEventsRequest(
        workspace_id=workspace_id, page_size=page_size, page_token=page_token
    )
    if start_time is not None:
        request.start_time.FromDatetime(_utc(start_time))
    if end_time is not None:
        request.end_time.FromDatetime(_utc(end_time))
    return request
