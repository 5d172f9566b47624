"""Conversions between store records and API messages."""

from __future__ import annotations

import json
from typing import Final

from elido.forwarder.v1 import forwarder_pb2 as pb
from google.protobuf import timestamp_pb2

from server.delivery._klaviyo import KeyVerdict
from server.intake._batch import BatchOutcome
from server.store._records import (
    AuditRecord,
    ClickOutcome,
    ConversionOutcome,
    DeliveryCounters,
    EventKind,
    FailedEventRecord,
    IntegrationRecord,
    IntegrationSettings,
    IntegrationState,
)

CLICK_DISPOSITION: Final = {
    ClickOutcome.QUEUED: pb.CLICK_DISPOSITION_QUEUED,
    ClickOutcome.DUPLICATE: pb.CLICK_DISPOSITION_DUPLICATE,
    ClickOutcome.ANONYMOUS: pb.CLICK_DISPOSITION_ANONYMOUS,
    ClickOutcome.NO_INTEGRATION: pb.CLICK_DISPOSITION_NO_INTEGRATION,
}
CONVERSION_DISPOSITION: Final = {
    ConversionOutcome.QUEUED: pb.CONVERSION_DISPOSITION_QUEUED,
    ConversionOutcome.DUPLICATE: pb.CONVERSION_DISPOSITION_DUPLICATE,
    ConversionOutcome.UNATTRIBUTED: pb.CONVERSION_DISPOSITION_UNATTRIBUTED,
    ConversionOutcome.NO_INTEGRATION: pb.CONVERSION_DISPOSITION_NO_INTEGRATION,
}
_STATE: Final = {
    IntegrationState.ACTIVE: pb.INTEGRATION_STATE_ACTIVE,
    IntegrationState.KEY_REJECTED: pb.INTEGRATION_STATE_KEY_REJECTED,
    IntegrationState.UNVERIFIED: pb.INTEGRATION_STATE_UNVERIFIED,
}
KEY_CHECK_VERDICT: Final = {
    KeyVerdict.VALID: pb.KEY_CHECK_VERDICT_VALID,
    KeyVerdict.UNKNOWN_KEY: pb.KEY_CHECK_VERDICT_KEY_REJECTED,
    KeyVerdict.SCOPE_MISSING: pb.KEY_CHECK_VERDICT_SCOPE_MISSING,
    KeyVerdict.INCONCLUSIVE: pb.KEY_CHECK_VERDICT_INCONCLUSIVE,
}
_KIND: Final = {
    EventKind.CLICK: pb.EVENT_KIND_CLICK,
    EventKind.CONVERSION: pb.EVENT_KIND_CONVERSION,
}


def timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for POSIX seconds (None stays unset)."""
    if seconds is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def settings_message(settings: IntegrationSettings) -> pb.IntegrationSettings:
    """The API form of effective settings."""
    message = pb.IntegrationSettings(
        click_metric_name=settings.click_metric_name,
        conversion_metric_name=settings.conversion_metric_name,
        email_parameters=list(settings.email_parameters),
        default_phone_region=settings.default_phone_region,
    )
    message.backfill_after.FromNanoseconds(round(settings.backfill_after_s * 1e9))
    return message


def integration_message(record: IntegrationRecord, counters: DeliveryCounters) -> pb.Integration:
    """The API form of an integration; carries no key material but the fingerprint."""
    return pb.Integration(
        workspace_id=record.workspace_id,
        key_fingerprint=record.key_fingerprint,
        state=_STATE[record.state],
        state_reason=record.state_reason,
        settings=settings_message(record.settings),
        delivery=pb.DeliveryStatus(
            queued_count=counters.queued,
            delivered_count=counters.delivered,
            failed_count=counters.failed,
            anonymous_click_count=counters.anonymous_clicks,
            last_delivery_time=timestamp(counters.last_delivery_at),
            last_error=counters.last_error,
            last_error_time=timestamp(counters.last_error_at),
        ),
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
        key_version=record.key_version,
    )


def failed_event_message(record: FailedEventRecord) -> pb.FailedEvent:
    """The API form of a failed event."""
    return pb.FailedEvent(
        event_id=str(record.event_id),
        workspace_id=record.workspace_id,
        kind=_KIND[record.kind],
        source_id=record.source_id,
        attempt_count=record.attempts,
        last_error=record.last_error,
        create_time=timestamp(record.created_at),
        fail_time=timestamp(record.failed_at),
    )


def stream_clicks_response(
    request: pb.StreamClicksRequest, outcome: BatchOutcome
) -> pb.StreamClicksResponse:
    """The ack of a batch: its id and one result per click, in order."""
    response = pb.StreamClicksResponse(batch_id=request.batch_id)
    results = response.results
    violations = outcome.violations
    for i, (click, disposition) in enumerate(zip(request.clicks, outcome.outcomes, strict=True)):
        result = results.add(click_id=click.click_id)
        if disposition is not None:
            result.disposition = CLICK_DISPOSITION[disposition]
            continue
        result.disposition = pb.CLICK_DISPOSITION_REJECTED
        for v in violations[i]:
            result.field_violations.add(field=v.field, description=v.description)
    return response


_AUDIT_ACTIONS: Final = {
    "register": pb.AUDIT_ACTION_REGISTER,
    "remove": pb.AUDIT_ACTION_REMOVE,
    "rewrap": pb.AUDIT_ACTION_REWRAP,
    "replay": pb.AUDIT_ACTION_REPLAY,
    "erase": pb.AUDIT_ACTION_ERASE,
    "key_recheck": pb.AUDIT_ACTION_KEY_RECHECK,
}


def audit_event_message(record: AuditRecord) -> pb.AuditEvent:
    """An audit trail entry as the API shows it."""
    entry = record.entry
    message = pb.AuditEvent(
        audit_id=str(record.audit_id),
        action=_AUDIT_ACTIONS.get(entry.action, pb.AUDIT_ACTION_UNSPECIFIED),
        workspace_id=entry.workspace_id,
        caller=pb.AuditCaller(
            token_name=entry.actor,
            roles=[r for r in entry.roles.split(",") if r],
            client_identity=entry.client_identity,
        ),
        outcome=entry.outcome,
    )
    message.time.FromNanoseconds(int(entry.occurred_at * 1e9))
    details = json.loads(entry.details) if entry.details else {}
    if isinstance(details, dict):
        message.details.update(details)
    return message
