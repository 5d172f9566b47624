"""Running ``elido-fwd`` in-process (beside the test's event loop) and as a real process."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from client.cli.__main__ import run

CONSOLE_SCRIPT = Path(sys.executable).with_name("elido-fwd")


class TtyInput(io.StringIO):
    """Stdin that claims to be a terminal (for the confirmation prompt)."""

    def isatty(self) -> bool:
        return True


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


async def cli(
    argv: Sequence[str], env: Mapping[str, str], *, stdin: str | io.StringIO = ""
) -> Result:
    """Runs the CLI in a worker thread: it blocks, and the fake server needs this loop."""
    stdin_stream = stdin if isinstance(stdin, io.StringIO) else io.StringIO(stdin)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(
        run, list(argv), stdin=stdin_stream, stdout=stdout, stderr=stderr, env=dict(env)
    )
    return Result(int(code), stdout.getvalue(), stderr.getvalue())


def process_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A clean environment for the console script: no inherited ELIDO_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELIDO_FORWARDER_")}
    env.update(extra)
    return env


def all_cmdlines() -> list[bytes]:
    """Every process's argv as the kernel shows it to any user (``ps``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes())
            except OSError:
                continue  # The process ended while we looked.
    return found
