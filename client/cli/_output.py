"""Rendering responses: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from elido.forwarder.v1 import forwarder_pb2 as pb
from google.protobuf import duration_pb2, json_format, timestamp_pb2
from google.protobuf.message import Message


def to_dict(message: Message) -> dict[str, Any]:
    """The proto3 JSON form, with the proto's snake_case names and zero values kept."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def write_json(out: TextIO, value: Any) -> None:
    json.dump(value, out, indent=2, ensure_ascii=False)
    out.write("\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A plain aligned table; the last column is not padded."""
    body = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(headers))]
    lines = []
    for row in body:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"


def when(ts: timestamp_pb2.Timestamp) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return "-"
    return ts.ToDatetime(tzinfo=dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def duration(value: duration_pb2.Duration) -> str:
    total = value.seconds
    if total == 0:
        return "-"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts)


def enum_name(name: str, prefix: str) -> str:
    """``INTEGRATION_STATE_KEY_REJECTED`` -> ``key rejected``."""
    return name.removeprefix(prefix).lower().replace("_", " ")


def state(integration: pb.Integration) -> str:
    return enum_name(pb.IntegrationState.Name(integration.state), "INTEGRATION_STATE_")


def integration_details(integration: pb.Integration) -> str:
    settings = integration.settings
    delivery = integration.delivery
    state_text = state(integration)
    if integration.state_reason:
        state_text += f" ({integration.state_reason})"
    rows = [
        ("workspace", integration.workspace_id),
        ("key", f"{integration.key_fingerprint} (transit key version {integration.key_version})"),
        ("state", state_text),
        ("click metric", settings.click_metric_name),
        ("conversion metric", settings.conversion_metric_name),
        ("email parameters", ", ".join(settings.email_parameters) or "-"),
        ("backfill after", duration(settings.backfill_after)),
        ("queued", str(delivery.queued_count)),
        ("delivered", str(delivery.delivered_count)),
        ("failed", str(delivery.failed_count)),
        ("anonymous clicks", str(delivery.anonymous_click_count)),
        ("last delivery", when(delivery.last_delivery_time)),
        ("last error", delivery.last_error or "-"),
        ("last error at", when(delivery.last_error_time)),
        ("created", when(integration.create_time)),
        ("updated", when(integration.update_time)),
    ]
    width = max(len(name) for name, _ in rows)
    return "".join(f"{name.ljust(width)}  {value}\n" for name, value in rows)


def integrations_table(integrations: Iterable[pb.Integration]) -> str:
    return table(
        ["WORKSPACE", "KEY", "STATE", "QUEUED", "DELIVERED", "FAILED", "LAST DELIVERY"],
        (
            [
                i.workspace_id,
                i.key_fingerprint,
                state(i),
                str(i.delivery.queued_count),
                str(i.delivery.delivered_count),
                str(i.delivery.failed_count),
                when(i.delivery.last_delivery_time),
            ]
            for i in integrations
        ),
    )


def failed_events_table(events: Iterable[pb.FailedEvent]) -> str:
    def short(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= 60 else text[:59] + "…"

    return table(
        ["EVENT ID", "KIND", "SOURCE ID", "ATTEMPTS", "FAILED AT", "LAST ERROR"],
        (
            [
                e.event_id,
                enum_name(pb.EventKind.Name(e.kind), "EVENT_KIND_"),
                e.source_id,
                str(e.attempt_count),
                when(e.fail_time),
                short(e.last_error) or "-",
            ]
            for e in events
        ),
    )


def audit_events_table(events: Iterable[pb.AuditEvent]) -> str:
    def caller(e: pb.AuditEvent) -> str:
        who = e.caller.token_name or "-"
        if e.caller.client_identity:
            who += f" ({e.caller.client_identity})"
        return who

    def whole(value: Any) -> Any:
        # Struct numbers are doubles; counts read better without ".0".
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: whole(v) for k, v in value.items()}
        if isinstance(value, list):
            return [whole(v) for v in value]
        return value

    def details(e: pb.AuditEvent) -> str:
        text = json.dumps(whole(json_format.MessageToDict(e.details)), sort_keys=True)
        return "-" if text == "{}" else text

    return table(
        ["TIME", "ACTION", "WORKSPACE", "CALLER", "OUTCOME", "DETAILS"],
        (
            [
                when(e.time),
                enum_name(pb.AuditAction.Name(e.action), "AUDIT_ACTION_"),
                e.workspace_id or "*",
                caller(e),
                e.outcome,
                details(e),
            ]
            for e in events
        ),
    )


def click_disposition(value: pb.ClickDisposition.ValueType) -> str:
    return enum_name(pb.ClickDisposition.Name(value), "CLICK_DISPOSITION_")


def conversion_disposition(value: pb.ConversionDisposition.ValueType) -> str:
    return enum_name(pb.ConversionDisposition.Name(value), "CONVERSION_DISPOSITION_")
