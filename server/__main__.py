"""``python -m server`` / ``elido-forwarder``: run or check the forwarder from environment settings.

Exit status: 0 after a clean stop (or a clean check), 2 for any configuration problem, each
printed as one line naming the variable, never as a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import sys
from collections.abc import Sequence
from importlib import metadata

import structlog

from server._app import serve
from server._check import check
from server._config import ConfigError, load_config, move_configs
from server._logging import configure_logging
from server.store import StoreError, move_sqlite_to_postgres

_M_ARENA_MAX = -8  # glibc's mallopt parameter number

DESCRIPTION = """\
The Elido -> Klaviyo forwarder: takes clicks and conversions over gRPC and delivers them to
Klaviyo. Configured only by environment variables (docs/operator.md#configuration-reference);
secrets may be given as files with NAME_FILE (VAULT_TOKEN_FILE, VAULT_SECRET_ID_FILE).
"""

EPILOG = """\
commands:
  serve (default)  run until SIGTERM/SIGINT; SIGHUP reloads the token file and TLS files
  check            validate every setting, read the token and TLS files, look at the store,
                   log in to Vault and check decrypt permission; one line per problem
  move-store       copy the SQLite store (FORWARDER_DB_PATH) into the empty PostgreSQL
                   database of FORWARDER_DATABASE_URL(_FILE); run with the forwarder stopped

exit status: 0 ok, 2 a configuration problem (one line per problem, naming the variable)
"""


def _version() -> str:
    try:
        return metadata.version("elido-klaviyo-forwarder")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elido-forwarder",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"elido-forwarder {_version()}")
    parser.add_argument(
        "command",
        nargs="?",
        default="serve",
        choices=("serve", "check", "move-store"),
        help="what to do",
    )
    return parser


def _check() -> int:
    # The checks provoke expected refusals (the decrypt probe); only real errors are logged.
    configure_logging("console", "critical")
    problems = check(os.environ)
    for problem in problems:
        print(problem)
    if problems:
        return 2
    print("ok: settings, token file, TLS files, store and Vault (login, decrypt permission)")
    return 0


def _move_store() -> int:
    configure_logging("console", "warning")
    try:
        source, target = move_configs(os.environ)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return 2
    try:
        copied = asyncio.run(move_sqlite_to_postgres(source, target))
    except StoreError as exc:
        print(f"move-store: nothing was copied: {exc}")
        return 1
    print(f"copied {source.path} into {target.redacted_url()}:")
    for table, rows in copied.items():
        print(f"  {table:<13} {rows:>10,} rows")
    return 0


def _fewer_malloc_arenas() -> None:
    """Two malloc arenas instead of eight per core.

    gRPC's threads each get a glibc arena, and memory freed in one (request bytes passing
    through) is not reused by another: the process grows by fragmentation, not by data.
    Two arenas keep a 1M-event backlog's forwarder within its memory budget. The worker
    processes inherit the setting; an operator's own MALLOC_ARENA_MAX wins.
    """
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    os.environ["MALLOC_ARENA_MAX"] = "2"  # for the intake workers, started later
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_ARENA_MAX, 2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; exit status 2 for a configuration error."""
    _fewer_malloc_arenas()
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "check":
        return _check()
    if args.command == "move-store":
        return _move_store()
    try:
        config = load_config(os.environ)
    except ConfigError as exc:
        # The log format asked for, if that setting is not itself the problem.
        wanted = os.environ.get("FORWARDER_LOG_FORMAT", "json").strip().lower()
        configure_logging("console" if wanted == "console" else "json")
        for problem in exc.problems:
            structlog.get_logger("server").error("bad configuration", error=problem)
        return 2
    configure_logging(config.server.log_format, config.server.log_level)
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        for problem in exc.problems:
            structlog.get_logger("server").error("bad configuration", error=problem)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
