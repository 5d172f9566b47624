"""Entry point of ``elido-fwd`` (also ``python -m client.cli``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NoReturn, TextIO

import structlog

from client import _config as cfg
from client._client import AsyncForwarderClient
from client._config import ClientConfig
from client._exceptions import ClientError, ForwarderError
from client.cli import _tokens
from client.cli._commands import COMMANDS, Io
from client.cli._exit import CliError, ExitCode, describe, exit_code_for
from client.cli._guard import secret_in_argv
from client.cli._parser import build_parser

if TYPE_CHECKING:
    from _typeshed import SupportsWrite


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _parser_class(stdout: TextIO, stderr: TextIO) -> type[argparse.ArgumentParser]:
    """An ArgumentParser writing to the injected streams and returning instead of exiting."""

    class Parser(argparse.ArgumentParser):
        def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
            if message:
                stderr.write(message)
            raise _ParserExit(status)

        def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
            if message:
                (stdout if file is sys.stdout else stderr).write(message)

    return Parser


def _config(args: argparse.Namespace, env: Mapping[str, str]) -> ClientConfig:
    """The environment's configuration with the flags laid over it (flags win)."""
    merged = dict(env)
    if args.token_file:
        merged.pop(cfg.ENV_TOKEN, None)
    for value, name in (
        (args.target, cfg.ENV_TARGET),
        (args.token_file, cfg.ENV_TOKEN_FILE),
        (args.ca, cfg.ENV_CA),
        (args.client_cert, cfg.ENV_CERT),
        (args.client_key, cfg.ENV_KEY),
        ("1" if args.tls else None, cfg.ENV_TLS),
        ("1" if args.insecure else None, cfg.ENV_INSECURE),
        (None if args.timeout is None else str(args.timeout), cfg.ENV_TIMEOUT),
    ):
        if value:
            merged[name] = value
    return ClientConfig.from_env(merged)


async def _dispatch(args: argparse.Namespace, config: ClientConfig, io: Io) -> ExitCode:
    command = COMMANDS[(args.group, getattr(args, "action", None))]
    async with AsyncForwarderClient(config) as client:
        return await command(args, client, io)


def run(
    argv: Sequence[str],
    *,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    env: Mapping[str, str],
) -> int:
    """Runs one command; returns its exit code. Never raises for an expected failure."""
    refusal = secret_in_argv(argv)
    if refusal:
        stderr.write(f"elido-fwd: error: {refusal}\n")
        return ExitCode.USAGE
    parser = build_parser(_parser_class(stdout, stderr))
    try:
        args = parser.parse_args(list(argv))
    except _ParserExit as exc:
        return exc.status
    io = Io(stdin=stdin, stdout=stdout, stderr=stderr, env=env)
    if args.group == "tokens":  # a local file: no connection, no client configuration
        try:
            return _tokens.COMMANDS[args.action](args, stdout, stderr, env)
        except CliError as exc:
            stderr.write(f"elido-fwd: error: {exc}\n")
            return exc.exit_code
    config: ClientConfig | None = None
    try:
        config = _config(args, env)
        return asyncio.run(_dispatch(args, config, io))
    except CliError as exc:
        stderr.write(f"elido-fwd: error: {exc}\n")
        return exc.exit_code
    except ForwarderError as exc:
        assert config is not None
        message = describe(
            exc,
            target=config.target,
            has_token=bool(config.token),
            timeout_s=config.default_timeout_s,
        )
        stderr.write(f"elido-fwd: error: {message}\n")
        return exit_code_for(exc)
    except ClientError as exc:
        stderr.write(f"elido-fwd: error: {exc}\n")
        return ExitCode.USAGE
    except KeyboardInterrupt:
        stderr.write("elido-fwd: interrupted\n")
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: real streams and environment, logs on stderr."""
    level = logging.DEBUG if os.environ.get("ELIDO_FORWARDER_DEBUG") else logging.WARNING
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    return run(
        sys.argv[1:] if argv is None else argv,
        stdin=sys.stdin,
        stdout=sys.stdout,
        stderr=sys.stderr,
        env=os.environ,
    )


if __name__ == "__main__":
    sys.exit(main())
