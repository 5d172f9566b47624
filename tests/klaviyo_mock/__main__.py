"""``python -m tests.klaviyo_mock --port 8899 --key pk_... [--account acct]`` for demos."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

import structlog

from tests.klaviyo_mock._config import AccountLimits, KeySpec, MockConfig, WindowLimit
from tests.klaviyo_mock._server import KlaviyoMock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.klaviyo_mock", description="Serve the Klaviyo mock."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8899, help="0 = a free port")
    parser.add_argument(
        "--key",
        action="append",
        default=[],
        help="a valid private key (repeatable); more via POST /__mock__/keys",
    )
    parser.add_argument("--account", default="acct", help="the account the --key(s) belong to")
    parser.add_argument(
        "--events-limit",
        default="350/3500",
        metavar="BURST/STEADY",
        help="Create Event limits: per second / per minute",
    )
    parser.add_argument("--bulk-limit", default="10/150", metavar="BURST/STEADY")
    parser.add_argument(
        "--no-retry-after", action="store_true", help="answer 429 without a Retry-After header"
    )
    args = parser.parse_args(argv)
    # stdout carries the "listening on" line a parent process parses; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    config = MockConfig(
        host=args.host,
        port=args.port,
        keys=tuple(KeySpec(key, args.account) for key in args.key),
        limits=AccountLimits(
            events=_window(args.events_limit),
            bulk=_window(args.bulk_limit),
            retry_after_header=not args.no_retry_after,
        ),
    )
    asyncio.run(_serve(config))
    return 0


def _window(text: str) -> WindowLimit:
    burst, steady = text.split("/")
    return WindowLimit(int(burst), int(steady))


async def _serve(config: MockConfig) -> None:
    mock = KlaviyoMock(config)
    await mock.start()
    # The one line a parent process reads to find the port (with --port 0).
    sys.stdout.write(f"klaviyo mock listening on {mock.base_url}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await mock.stop()


if __name__ == "__main__":
    sys.exit(main())
