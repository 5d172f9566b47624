"""Exit codes, and the one-line message printed for each kind of failure."""

from __future__ import annotations

import enum
import re
from typing import Final

import grpc

from client._exceptions import ForwarderError


class ExitCode(enum.IntEnum):
    """The documented exit codes of ``elido-fwd``."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    INVALID_INPUT = 4
    AUTH = 5
    UNAVAILABLE = 6


class CliError(Exception):
    """A failure the CLI reports as one line on stderr and an exit code."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_BY_CODE: Final = {
    grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: ExitCode.INVALID_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: ExitCode.INVALID_INPUT,
    grpc.StatusCode.FAILED_PRECONDITION: ExitCode.INVALID_INPUT,
    grpc.StatusCode.ALREADY_EXISTS: ExitCode.INVALID_INPUT,
    grpc.StatusCode.UNAUTHENTICATED: ExitCode.AUTH,
    grpc.StatusCode.PERMISSION_DENIED: ExitCode.AUTH,
    grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ExitCode.UNAVAILABLE,
}

# Server field paths -> the flag that sets them, so "bad input" names what the user typed.
_FLAGS: Final = {
    "workspace_id": "--workspace",
    "private_key": "--key-file",
    "settings.click_metric_name": "--click-metric",
    "settings.conversion_metric_name": "--conversion-metric",
    "settings.email_parameters": "--email-param",
    "settings.backfill_after": "--backfill-after",
    "click_id": "--click-id",
    "click_time": "--time",
    "conversion_time": "--time",
    "link_id": "--link-id",
    "short_url": "--short-url",
    "destination_url": "--url",
    "utm_parameters": "--utm",
    "identifiers.email": "--email",
    "identifiers.phone_number": "--phone",
    "identifiers.external_id": "--external-id",
    "identifiers.kx": "--kx",
    "user_agent": "--user-agent",
    "referrer": "--referrer",
    "conversion_id": "--conversion-id",
    "value": "--value",
    "currency": "--currency",
    "properties": "--property",
    "event_ids": "--event-id",
    "failed_after": "--failed-after",
    "failed_before": "--failed-before",
    "error_contains": "--error",
    "kind": "--kind",
    "emails": "--identifiers-file",
    "phone_numbers": "--identifiers-file",
    "external_ids": "--identifiers-file",
    "kxs": "--identifiers-file",
    "all_workspaces": "--all-workspaces",
}


def flag_for(field_path: str) -> str | None:
    """The CLI flag behind a server field path such as ``click.identifiers.email``."""
    path = re.sub(r"\[[^\]]*\]", "", field_path)
    for prefix in ("click.", "conversion.", "clicks.", ""):
        candidate = path.removeprefix(prefix) if prefix else path
        while candidate:
            if candidate in _FLAGS:
                return _FLAGS[candidate]
            candidate = candidate.rpartition(".")[0]
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def describe(error: ForwarderError, *, target: str, has_token: bool, timeout_s: float) -> str:
    """One line saying what failed and, where it helps, what to do."""
    message = _one_line(error.message) or error.code.name
    code = error.code
    if code == grpc.StatusCode.INVALID_ARGUMENT and error.field_violations:
        parts = []
        for field_path, description in error.field_violations:
            flag = flag_for(field_path)
            name = f"{field_path} ({flag})" if flag else field_path
            parts.append(f"{name}: {_one_line(description)}")
        return "invalid input: " + "; ".join(parts)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return f"invalid input: {message}"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"not found: {message}"
    if code == grpc.StatusCode.UNAUTHENTICATED:
        hint = (
            "no token configured: set ELIDO_FORWARDER_TOKEN_FILE or pass --token-file"
            if not has_token
            else "check the token (ELIDO_FORWARDER_TOKEN[_FILE] or --token-file)"
        )
        return f"authentication failed: {message}; {hint}"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return f"permission denied: {message}; this command needs a token with another role"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer from the forwarder at {target} within {timeout_s:g}s"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED):
        after = f"; retry after {error.retry_delay.total_seconds():g}s" if error.retry_delay else ""
        reason = f" ({error.reason})" if error.reason else ""
        return f"forwarder at {target} unavailable{reason}: {message}{after}"
    reason = f" [{error.reason}]" if error.reason else ""
    return f"{code.name.lower()}{reason}: {message}"


def exit_code_for(error: ForwarderError) -> ExitCode:
    return _BY_CODE.get(error.code, ExitCode.ERROR)
