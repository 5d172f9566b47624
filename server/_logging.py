"""Logging: structlog everywhere, JSON in production, readable on a terminal.

Every line passes :func:`redact_secrets` last-but-one, so a Klaviyo key or a bearer token that
slips into an event (an exception message from a library, a header dump) is replaced before it
is rendered, and emails are masked because a click's recipient is personal data.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Final, Literal

import structlog

LogFormat = Literal["json", "console"]

_PRIVATE_KEY: Final = re.compile(r"pk_[A-Za-z0-9]{8,}")
_BEARER: Final = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_VAULT_TOKEN: Final = re.compile(r"\b(hvs|s|hvb|b)\.[A-Za-z0-9_-]{20,}")
_EMAIL: Final = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
# Keys whose values are secret whatever they look like.
_SECRET_FIELDS: Final = frozenset(
    {"private_key", "api_key", "key", "token", "authorization", "secret_id", "plaintext"}
)


def _scrub(text: str) -> str:
    text = _PRIVATE_KEY.sub(lambda m: f"pk_…{m.group(0)[-4:]}", text)
    text = _BEARER.sub(r"\1[REDACTED]", text)
    text = _VAULT_TOKEN.sub("[REDACTED-VAULT-TOKEN]", text)
    return _EMAIL.sub(r"\1***@\2", text)


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {
            k: "[REDACTED]" if k in _SECRET_FIELDS else _scrub_value(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Anything else is rendered through str() later; scrub that rendering now.
    return _scrub(str(value))


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: redact keys and tokens, mask emails, in every field."""
    for field, value in list(event_dict.items()):
        event_dict[field] = "[REDACTED]" if field in _SECRET_FIELDS else _scrub_value(value)
    return event_dict


def configure_logging(fmt: LogFormat = "json", level: str = "info") -> None:
    """Configure structlog (and route stdlib logging through the same redaction)."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (hvac, httpx, grpc) log through stdlib logging: send it through the same chain.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
