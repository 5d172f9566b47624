"""What each ``elido-fwd`` command does."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

from elido.forwarder.v1 import forwarder_pb2 as pb
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from client._client import AsyncForwarderClient
from client._requests import integration_settings
from client.cli import _output as out
from client.cli._exit import CliError, ExitCode
from client.cli._idinput import read_identifiers
from client.cli._keyinput import read_private_key

_M = TypeVar("_M", pb.Click, pb.Conversion)


@dataclass(frozen=True)
class Io:
    """The streams a command talks to (injected so tests can run the CLI in-process)."""

    stdin: TextIO
    stdout: TextIO
    stderr: TextIO
    env: Mapping[str, str]


Command = Callable[[argparse.Namespace, AsyncForwarderClient, Io], Awaitable[ExitCode]]


async def register(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    key = read_private_key(args.key_file, stdin=io.stdin, stderr=io.stderr)
    settings = integration_settings(
        click_metric_name=args.click_metric,
        conversion_metric_name=args.conversion_metric,
        email_parameters=args.email_param,
        backfill_after=args.backfill_after,
    )
    response = await client.register_integration(args.workspace, key, settings)
    del key  # Nothing below needs it; do not keep it alive longer than the call.
    if args.json:
        out.write_json(io.stdout, out.to_dict(response))
    else:
        verb = "Replaced the key of" if response.replaced else "Registered"
        io.stdout.write(f"{verb} workspace {response.integration.workspace_id}.\n")
        io.stdout.write(out.integration_details(response.integration))
    return ExitCode.OK


async def get(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    response = await client.get_integration(args.workspace)
    if args.json:
        out.write_json(io.stdout, out.to_dict(response.integration))
    else:
        io.stdout.write(out.integration_details(response.integration))
    return ExitCode.OK


async def list_(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    integrations = [i async for i in client.iter_integrations(page_size=args.page_size)]
    if args.json:
        out.write_json(io.stdout, {"integrations": [out.to_dict(i) for i in integrations]})
    elif integrations:
        io.stdout.write(out.integrations_table(integrations))
    else:
        io.stdout.write("No integrations.\n")
    return ExitCode.OK


def _confirm_removal(workspace_id: str, io: Io) -> None:
    if not io.stdin.isatty():
        raise CliError(
            "refusing to remove without confirmation: stdin is not a terminal; pass --yes",
            ExitCode.USAGE,
        )
    io.stderr.write(
        f"Removing the integration of workspace {workspace_id!r} destroys its Klaviyo key and "
        "drops its undelivered events.\nType the workspace id to confirm: "
    )
    io.stderr.flush()
    if io.stdin.readline().strip() != workspace_id:
        raise CliError("not removed: the confirmation did not match", ExitCode.ERROR)


async def remove(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    if not args.yes:
        _confirm_removal(args.workspace, io)
    response = await client.remove_integration(args.workspace)
    if args.json:
        out.write_json(io.stdout, out.to_dict(response))
    else:
        io.stdout.write(
            f"Removed workspace {args.workspace}; dropped {response.dropped_event_count} "
            "undelivered events.\n"
        )
    return ExitCode.OK


_VERDICT_TEXT: Final = {
    pb.KEY_CHECK_VERDICT_VALID: "Klaviyo accepts the key (events:write present)",
    pb.KEY_CHECK_VERDICT_KEY_REJECTED: "Klaviyo does not know the key",
    pb.KEY_CHECK_VERDICT_SCOPE_MISSING: "the key lacks the events:write scope",
    pb.KEY_CHECK_VERDICT_INCONCLUSIVE: "Klaviyo could not be asked; the state is unchanged",
}


async def verify(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    profile = None
    if args.test_event_email or args.test_event_phone or args.test_event_external_id:
        profile = pb.ProfileIdentifiers(
            email=args.test_event_email,
            phone_number=args.test_event_phone,
            external_id=args.test_event_external_id,
        )
    response = await client.verify_integration_key(args.workspace, profile)
    valid = response.verdict == pb.KEY_CHECK_VERDICT_VALID
    test_ok = not response.HasField("test_event") or response.test_event.accepted
    if args.json:
        out.write_json(io.stdout, out.to_dict(response))
    else:
        verdict = out.enum_name(pb.KeyCheckVerdict.Name(response.verdict), "KEY_CHECK_VERDICT_")
        text = _VERDICT_TEXT.get(response.verdict, "")
        io.stdout.write(f"Key check: {verdict}: {text}.\n")
        if response.detail and not valid:
            io.stdout.write(f"Klaviyo answered: {response.detail}\n")
        if response.HasField("test_event"):
            test = response.test_event
            if test.accepted:
                io.stdout.write(
                    f'Test event sent (metric "Elido Test Event", unique_id {test.unique_id}).\n'
                )
            else:
                io.stdout.write(f"Test event not accepted: {test.detail}\n")
        io.stdout.write(out.integration_details(response.integration))
    if response.verdict == pb.KEY_CHECK_VERDICT_INCONCLUSIVE:
        return ExitCode.UNAVAILABLE
    return ExitCode.OK if valid and test_ok else ExitCode.ERROR


async def rewrap(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    response = await client.rewrap_keys(args.workspace)
    if args.json:
        out.write_json(io.stdout, out.to_dict(response))
    else:
        io.stdout.write(
            f"Rewrapped {response.rewrapped_count} keys; {response.unchanged_count} were "
            "already at the newest transit key version.\n"
        )
    return ExitCode.OK


def _read_json_items(source: str, stdin: TextIO) -> list[Any]:
    try:
        text = stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror}", ExitCode.USAGE) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise CliError(
                        f"invalid input: --from-json line {number}: {exc.msg}",
                        ExitCode.INVALID_INPUT,
                    ) from None
        return items
    return document if isinstance(document, list) else [document]


def _messages(items: list[Any], message_type: type[_M], what: str) -> list[_M]:
    messages = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise CliError(
                f"invalid input: --from-json item {index}: expected a JSON object",
                ExitCode.INVALID_INPUT,
            )
        try:
            messages.append(json_format.ParseDict(item, message_type()))
        except json_format.ParseError as exc:
            raise CliError(
                f"invalid input: --from-json item {index} ({what}): {exc}", ExitCode.INVALID_INPUT
            ) from None
    return messages


def _identifiers(args: argparse.Namespace) -> pb.ProfileIdentifiers:
    return pb.ProfileIdentifiers(
        email=args.email, phone_number=args.phone, external_id=args.external_id, kx=args.kx
    )


def _clicks_from(args: argparse.Namespace, io: Io) -> list[pb.Click]:
    if args.from_json:
        clicks = _messages(_read_json_items(args.from_json, io.stdin), pb.Click, "Click")
    else:
        click = pb.Click(
            click_id=args.click_id,
            link_id=args.link_id,
            short_url=args.short_url,
            destination_url=args.url,
            utm_parameters=dict(args.utm),
            identifiers=_identifiers(args),
            user_agent=args.user_agent,
            referrer=args.referrer,
        )
        if args.time is not None:
            click.click_time.FromDatetime(args.time)
        clicks = [click]
    now = dt.datetime.now(dt.UTC)
    for click in clicks:
        # Defaults that make trying the pipeline by hand a one-liner.
        click.workspace_id = click.workspace_id or args.workspace
        click.click_id = click.click_id or f"cli-{uuid.uuid4().hex}"
        if not click.HasField("click_time"):
            click.click_time.FromDatetime(now)
        if not click.workspace_id:
            raise CliError("invalid input: --workspace is required", ExitCode.INVALID_INPUT)
    return clicks


async def send_clicks(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    clicks = _clicks_from(args, io)
    results: list[pb.ClickResult] = []
    if len(clicks) == 1:
        response = await client.forward_click(clicks[0])
        results.append(
            pb.ClickResult(click_id=clicks[0].click_id, disposition=response.disposition)
        )
    else:

        async def source() -> AsyncIterator[pb.Click]:
            for click in clicks:
                yield click

        async for ack in client.stream_clicks(source()):
            results.extend(ack.results)
    if args.json:
        out.write_json(io.stdout, {"results": [out.to_dict(r) for r in results]})
    else:
        io.stdout.write(
            out.table(
                ["CLICK ID", "DISPOSITION", "PROBLEMS"],
                (
                    [
                        r.click_id,
                        out.click_disposition(r.disposition),
                        "; ".join(f"{v.field}: {v.description}" for v in r.field_violations) or "-",
                    ]
                    for r in results
                ),
            )
        )
    rejected = any(r.disposition == pb.CLICK_DISPOSITION_REJECTED for r in results)
    return ExitCode.INVALID_INPUT if rejected else ExitCode.OK


def _property_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _conversions_from(args: argparse.Namespace, io: Io) -> list[pb.Conversion]:
    if args.from_json:
        items = _read_json_items(args.from_json, io.stdin)
        conversions = _messages(items, pb.Conversion, "Conversion")
    else:
        conversion = pb.Conversion(
            conversion_id=args.conversion_id,
            click_id=args.click_id,
            value=args.value,
            currency=args.currency,
            identifiers=_identifiers(args),
        )
        conversion.properties.update({k: _property_value(v) for k, v in args.property})
        if args.time is not None:
            conversion.conversion_time.FromDatetime(args.time)
        conversions = [conversion]
    for conversion in conversions:
        conversion.workspace_id = conversion.workspace_id or args.workspace
        conversion.conversion_id = conversion.conversion_id or f"cli-{uuid.uuid4().hex}"
        if not conversion.workspace_id:
            raise CliError("invalid input: --workspace is required", ExitCode.INVALID_INPUT)
    return conversions


async def send_conversions(
    args: argparse.Namespace, client: AsyncForwarderClient, io: Io
) -> ExitCode:
    rows = []
    for conversion in _conversions_from(args, io):
        response = await client.forward_conversion(conversion)
        rows.append((conversion.conversion_id, response.disposition))
    if args.json:
        out.write_json(
            io.stdout,
            {
                "results": [
                    {"conversion_id": cid, "disposition": pb.ConversionDisposition.Name(d)}
                    for cid, d in rows
                ]
            },
        )
    else:
        io.stdout.write(
            out.table(
                ["CONVERSION ID", "DISPOSITION"],
                ([cid, out.conversion_disposition(d)] for cid, d in rows),
            )
        )
    return ExitCode.OK


async def list_failed(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    events: list[pb.FailedEvent] = []
    async for event in client.iter_failed_events(args.workspace):
        events.append(event)
        if args.limit and len(events) >= args.limit:
            break
    if args.json:
        out.write_json(io.stdout, {"failed_events": [out.to_dict(e) for e in events]})
    elif events:
        io.stdout.write(out.failed_events_table(events))
    else:
        io.stdout.write(f"No failed events for workspace {args.workspace}.\n")
    return ExitCode.OK


_KINDS = {"click": pb.EVENT_KIND_CLICK, "conversion": pb.EVENT_KIND_CONVERSION}


async def replay(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    filtered = args.failed_after or args.failed_before or args.error or args.kind
    if args.all and (args.event_id or filtered):
        raise CliError("--all cannot be combined with --event-id or filters", ExitCode.USAGE)
    if not (args.all or args.event_id or filtered):
        raise CliError(
            "name events (--event-id), filter them (--failed-after, --failed-before, --error, "
            "--kind), or pass --all",
            ExitCode.USAGE,
        )
    response = await client.replay_failed_events(
        args.workspace,
        args.event_id,
        all_events=args.all,
        failed_after=args.failed_after,
        failed_before=args.failed_before,
        error_contains=args.error,
        kind=_KINDS[args.kind] if args.kind else pb.EVENT_KIND_UNSPECIFIED,
        dry_run=args.dry_run,
    )
    if args.json:
        out.write_json(io.stdout, out.to_dict(response))
    elif args.dry_run:
        io.stdout.write(f"Would replay {response.replayed_count} events (dry run).\n")
    else:
        io.stdout.write(f"Replayed {response.replayed_count} events.\n")
    return ExitCode.OK


async def erase(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    ids = read_identifiers(args.identifiers_file, stdin=io.stdin)
    response = await client.erase_personal_data(
        args.workspace,
        emails=ids.emails,
        phone_numbers=ids.phone_numbers,
        external_ids=ids.external_ids,
        kxs=ids.kxs,
        all_workspaces=args.all_workspaces,
    )
    if args.json:
        out.write_json(io.stdout, out.to_dict(response))
    else:
        scope = "every workspace" if args.all_workspaces else f"workspace {args.workspace}"
        io.stdout.write(
            f"Erased {ids.count()} identifiers in {scope}: {response.erased_click_count} "
            f"click-index entries, {response.erased_queued_count} queued and "
            f"{response.erased_failed_count} failed events deleted.\n"
        )
    return ExitCode.OK


async def list_audit(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    events: list[pb.AuditEvent] = []
    page_size = min(args.limit, 1000) if args.limit > 0 else 0
    async for event in client.iter_audit_events(
        args.workspace, start_time=args.since, end_time=args.until, page_size=page_size
    ):
        events.append(event)
        if args.limit and len(events) >= args.limit:
            break
    if args.json:
        out.write_json(io.stdout, {"audit_events": [out.to_dict(e) for e in events]})
    elif events:
        io.stdout.write(out.audit_events_table(events))
    else:
        io.stdout.write("No audit entries.\n")
    return ExitCode.OK


async def health(args: argparse.Namespace, client: AsyncForwarderClient, io: Io) -> ExitCode:
    status = await client.check_health(args.service)
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    if args.json:
        out.write_json(io.stdout, {"status": name})
    else:
        io.stdout.write(f"{name}\n")
    return ExitCode.OK if name == "SERVING" else ExitCode.UNAVAILABLE


COMMANDS: dict[tuple[str, str | None], Command] = {
    ("integrations", "register"): register,
    ("integrations", "get"): get,
    ("integrations", "list"): list_,
    ("integrations", "remove"): remove,
    ("integrations", "verify"): verify,
    ("integrations", "rewrap"): rewrap,
    ("clicks", "send"): send_clicks,
    ("conversions", "send"): send_conversions,
    ("failed", "list"): list_failed,
    ("failed", "replay"): replay,
    ("erase", None): erase,
    ("audit", "list"): list_audit,
    ("health", None): health,
}
