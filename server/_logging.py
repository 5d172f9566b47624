"""Logging: structlog everywhere, JSON in production, readable on a terminal.

Every line passes :func:`redact_secrets` (shared with the edge sidecar, in
``elido_common.redaction``) last-but-one, so a Klaviyo key or a bearer token that
slips into an event (an exception message from a library, a header dump) is replaced before it
is rendered, and emails are masked because a click's recipient is personal data.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

from elido_common.redaction import redact_secrets

LogFormat = Literal["json", "console"]


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
