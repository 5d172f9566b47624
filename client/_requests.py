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
) -> pb.ReplayFailedEventsRequest:
    if isinstance(workspace_id, pb.ReplayFailedEventsRequest):
        return workspace_id
    ids = list(event_ids)
    if bool(ids) == all_events:
        raise ClientError("replay needs either event ids or all_events=True, not both")
    return pb.ReplayFailedEventsRequest(workspace_id=workspace_id, event_ids=ids, all=all_events)
