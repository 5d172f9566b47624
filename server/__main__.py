"""``python -m server`` / ``elido-forwarder``: run the forwarder from environment settings."""

from __future__ import annotations

import asyncio
import os
import sys

import structlog

from server._app import serve
from server._config import ConfigError, load_config
from server._logging import configure_logging


def main() -> int:
    """Entry point; exit status 2 for a configuration error."""
    try:
        config = load_config(os.environ)
    except (ConfigError, ValueError) as exc:
        configure_logging("console")
        structlog.get_logger("server").error("bad configuration", error=str(exc))
        return 2
    configure_logging(config.server.log_format, config.server.log_level)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        structlog.get_logger("server").error("bad configuration", error=str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
