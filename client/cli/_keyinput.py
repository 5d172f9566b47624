"""Reading the Klaviyo private key from stdin or a file, never from arguments."""

from __future__ import annotations

import getpass
import stat
from pathlib import Path
from typing import TextIO

from client.cli._exit import CliError, ExitCode


def read_private_key(source: str, *, stdin: TextIO, stderr: TextIO) -> str:
    """The key read from ``source`` (``-`` for stdin, else a path), whitespace trimmed.

    The key is never echoed: not while typed (a terminal gets a hidden prompt), not in
    errors about its form.
    """
    if source == "-":
        if stdin.isatty():
            text = getpass.getpass("Klaviyo private key (input hidden): ", stream=stderr)
        else:
            text = stdin.read()
        origin = "stdin"
    else:
        path = Path(source)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CliError(f"cannot read the key file {path}: {reason}", ExitCode.USAGE) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            stderr.write(
                f"elido-fwd: warning: the key file {path} is readable by other users; "
                "chmod 600 it, or better, delete it once registered\n"
            )
        origin = f"the key file {path}"
    key = text.strip()
    if not key:
        raise CliError(f"invalid input: {origin} holds no key (--key-file)", ExitCode.INVALID_INPUT)
    if any(c.isspace() for c in key):
        raise CliError(
            f"invalid input: {origin} must hold the key alone, on one line (--key-file)",
            ExitCode.INVALID_INPUT,
        )
    return key
