"""The ``elido-fwd`` argument parser."""

from __future__ import annotations

import argparse
import datetime as dt
import re

from client.cli import _tokens

EPILOG = """\
configuration (flags win over the environment):
  ELIDO_FORWARDER_TARGET      host:port of the forwarder (default localhost:50051)
  ELIDO_FORWARDER_TOKEN_FILE  file holding the bearer token (or ELIDO_FORWARDER_TOKEN)
  ELIDO_FORWARDER_CA          CA bundle to verify the server (enables TLS)
  ELIDO_FORWARDER_CERT/_KEY   client certificate and key for mTLS
  ELIDO_FORWARDER_TLS=1       TLS with the system's CA roots

exit codes:
  0 ok, 1 other failure, 2 usage or configuration, 3 not found, 4 invalid input,
  5 authentication or permission, 6 forwarder unavailable or too slow
"""

_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_duration(text: str) -> dt.timedelta:
    """``24h``, ``90m``, ``1h30m``, ``2d``, ``3600s`` or bare seconds."""
    if text.isdigit():
        return dt.timedelta(seconds=int(text))
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 24h, 90m, 2d)")
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time; without a zone it is taken as UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (example: 2026-11-27T10:00:00Z)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def _add_connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options valid before or after the command; leaf copies default to SUPPRESS so that
    they only override what was given before the command when they are given themselves."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target", default=default(None), help="forwarder host:port (env ELIDO_FORWARDER_TARGET)"
    )
    group.add_argument(
        "--token-file",
        default=default(None),
        metavar="PATH",
        help="file holding the bearer token (env ELIDO_FORWARDER_TOKEN_FILE)",
    )
    group.add_argument(
        "--ca",
        default=default(None),
        metavar="PATH",
        help="CA bundle to verify the server; enables TLS (env ELIDO_FORWARDER_CA)",
    )
    group.add_argument(
        "--client-cert",
        default=default(None),
        metavar="PATH",
        help="client certificate for mTLS (env ELIDO_FORWARDER_CERT)",
    )
    group.add_argument(
        "--client-key",
        default=default(None),
        metavar="PATH",
        help="client certificate's key for mTLS (env ELIDO_FORWARDER_KEY)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help="use TLS with the system's CA roots (env ELIDO_FORWARDER_TLS=1)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=default(False),
        help="allow sending the token in plaintext to a non-loopback target",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(None),
        metavar="SECONDS",
        help="deadline of each call, retries included (default 10)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print JSON for scripts instead of tables",
    )


def _leaf(
    group: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str
) -> argparse.ArgumentParser:
    parser = group.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
    _add_connection_options(parser, suppress=True)
    return parser


def _identifier_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--email", default="", help="the recipient's email address")
    parser.add_argument("--phone", default="", help="phone number in E.164 form (+14155550100)")
    parser.add_argument("--external-id", default="", help="the profile's external id")
    parser.add_argument("--kx", default="", help="Klaviyo exchange id (_kx link parameter)")


def build_parser(
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """The parser; sub-parsers are made of ``parser_class`` too (argparse's default)."""
    parser = parser_class(
        prog="elido-fwd",
        description="Operate the Elido -> Klaviyo forwarder.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    _add_connection_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    integrations = commands.add_parser("integrations", help="connect and manage workspaces")
    actions = integrations.add_subparsers(dest="action", required=True, metavar="ACTION")
    register = _leaf(actions, "register", "connect a workspace, or replace its key/settings")
    register.add_argument("--workspace", required=True)
    register.add_argument(
        "--key-file",
        required=True,
        metavar="PATH|-",
        help="file holding the Klaviyo private key, or - for stdin (never pass the key itself)",
    )
    register.add_argument("--click-metric", default="", help="metric name for clicks")
    register.add_argument("--conversion-metric", default="", help="metric name for conversions")
    register.add_argument(
        "--email-param",
        action="append",
        default=[],
        metavar="NAME",
        help="link parameter carrying the email (repeatable)",
    )
    register.add_argument(
        "--backfill-after",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="older events are sent as backfill (24h)",
    )
    get = _leaf(actions, "get", "show one integration's settings and delivery status")
    get.add_argument("--workspace", required=True)
    listing = _leaf(actions, "list", "list every integration")
    listing.add_argument("--page-size", type=int, default=0, help=argparse.SUPPRESS)
    remove = _leaf(actions, "remove", "disconnect a workspace, destroying its key")
    remove.add_argument("--workspace", required=True)
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    verify = _leaf(
        actions,
        "verify",
        "check a workspace's stored key against Klaviyo again; optionally send a test event",
    )
    verify.add_argument("--workspace", required=True)
    verify.add_argument(
        "--test-event-email", default="", metavar="EMAIL", help="send a test event to this profile"
    )
    verify.add_argument(
        "--test-event-phone", default="", metavar="PHONE", help="... or to this phone number"
    )
    verify.add_argument(
        "--test-event-external-id", default="", metavar="ID", help="... or to this external id"
    )
    rewrap = _leaf(actions, "rewrap", "rewrap stored keys to the newest transit key version")
    rewrap.add_argument("--workspace", default="", help="only this workspace (default: all)")

    clicks = commands.add_parser("clicks", help="report clicks by hand")
    click_actions = clicks.add_subparsers(dest="action", required=True, metavar="ACTION")
    send = _leaf(click_actions, "send", "report one click, or many from JSON")
    send.add_argument("--workspace", default="")
    send.add_argument("--click-id", default="", help="default: a new random id")
    _identifier_options(send)
    send.add_argument("--url", default="", help="destination URL (identifiers are read from it)")
    send.add_argument("--short-url", default="")
    send.add_argument("--link-id", default="")
    send.add_argument("--utm", action="append", type=parse_pair, default=[], metavar="NAME=VALUE")
    send.add_argument("--time", type=parse_time, default=None, help="ISO 8601; default now")
    send.add_argument("--user-agent", default="")
    send.add_argument("--referrer", default="")
    send.add_argument(
        "--from-json",
        metavar="PATH|-",
        help="read clicks (an object, an array, or JSON lines) instead of flags",
    )

    conversions = commands.add_parser("conversions", help="report conversions by hand")
    conversion_actions = conversions.add_subparsers(dest="action", required=True, metavar="ACTION")
    csend = _leaf(conversion_actions, "send", "report one conversion, or many from JSON")
    csend.add_argument("--workspace", default="")
    csend.add_argument("--conversion-id", default="", help="default: a new random id")
    csend.add_argument("--click-id", default="", help="the click the conversion came from")
    csend.add_argument("--value", type=float, default=0.0)
    csend.add_argument("--currency", default="", help="ISO 4217 code, e.g. USD")
    csend.add_argument("--time", type=parse_time, default=None, help="ISO 8601; default now")
    csend.add_argument(
        "--property",
        action="append",
        type=parse_pair,
        default=[],
        metavar="NAME=VALUE",
        help="event property; VALUE may be JSON",
    )
    _identifier_options(csend)
    csend.add_argument(
        "--from-json",
        metavar="PATH|-",
        help="read conversions (an object, an array, or JSON lines)",
    )

    failed = commands.add_parser("failed", help="inspect and replay failed events")
    failed_actions = failed.add_subparsers(dest="action", required=True, metavar="ACTION")
    flist = _leaf(failed_actions, "list", "list a workspace's failed events, oldest first")
    flist.add_argument("--workspace", required=True)
    flist.add_argument("--limit", type=int, default=0, help="show at most this many")
    replay = _leaf(failed_actions, "replay", "put failed events back in the delivery queue")
    replay.add_argument("--workspace", required=True)
    replay.add_argument("--all", action="store_true", help="every failed event of the workspace")
    replay.add_argument(
        "--event-id",
        action="append",
        default=[],
        metavar="ID",
        help="one event to replay (repeatable; combines with the filters)",
    )
    replay.add_argument(
        "--failed-after", type=parse_time, default=None, metavar="TIME", help="ISO 8601"
    )
    replay.add_argument(
        "--failed-before", type=parse_time, default=None, metavar="TIME", help="ISO 8601"
    )
    replay.add_argument(
        "--error", default="", metavar="TEXT", help="only events whose last error contains TEXT"
    )
    replay.add_argument("--kind", choices=("click", "conversion"), default=None)
    replay.add_argument(
        "--dry-run", action="store_true", help="count what would be replayed; change nothing"
    )

    erase = _leaf(commands, "erase", "erase a person's data (a GDPR/CCPA request)")
    where = erase.add_mutually_exclusive_group(required=True)
    where.add_argument("--workspace", default="", help="the workspace to erase in")
    where.add_argument("--all-workspaces", action="store_true", help="erase in every workspace")
    erase.add_argument(
        "--identifiers-file",
        required=True,
        metavar="PATH|-",
        help="file (or - for stdin) with one identifier a line: email:, phone:, "
        "external_id: or kx: (never pass identifiers as arguments)",
    )

    audit = commands.add_parser("audit", help="the audit trail of admin actions")
    audit_actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")
    alist = _leaf(audit_actions, "list", "list audit entries, newest first")
    alist.add_argument("--workspace", default="", help="only this workspace's entries")
    alist.add_argument("--since", type=parse_time, default=None, metavar="TIME", help="ISO 8601")
    alist.add_argument(
        "--until", type=parse_time, default=None, metavar="TIME", help="ISO 8601, exclusive"
    )
    alist.add_argument("--limit", type=int, default=0, help="show at most this many")

    health = _leaf(commands, "health", "check the forwarder's health (grpc.health.v1)")
    health.add_argument("--service", default="", help="service name (default: the server)")

    _tokens.add_parsers(commands)
    return parser
