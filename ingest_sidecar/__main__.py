"""``elido-sidecar --config sidecar.toml``: runs the edge ingest sidecar until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys

import structlog

from elido_common.redaction import redact_secrets

from . import _tracing
from ._config import ConfigError, SidecarConfig, load_config
from ._sidecar import Sidecar


def configure_logging(level: str, as_json: bool) -> None:
    """structlog to stderr, JSON lines by default, through the server's redaction."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            # Emails masked, keys and tokens removed: bad input is logged with its context.
            redact_secrets,
            renderer,
        ],
        # The level was validated with the configuration.
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


async def _run(config: SidecarConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Sidecar(config).run_until(stop)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    parser = argparse.ArgumentParser(prog="elido-sidecar", description=__doc__)
    parser.add_argument("--config", help="TOML configuration file (ELIDO_SIDECAR_* override)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        _tracing.configure()
    except ConfigError as exc:
        parser.exit(2, f"elido-sidecar: {exc}\n")
    configure_logging(config.log.level, config.log.json)
    # Click records are acyclic and freed by reference counting; the cycle collector's default
    # (a pass every 700 allocations) cost ~5 % of a click's time walking them for nothing.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    try:
        asyncio.run(_run(config))
    except ConfigError as exc:
        # A setting that only fails when used (a port taken, a spool folder not writable).
        parser.exit(2, f"elido-sidecar: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
