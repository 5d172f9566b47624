"""Refusing secrets on the command line.

Arguments are readable by every user of the machine (``ps``, ``/proc/*/cmdline``) and are
written to shell history, so a Klaviyo key or a bearer token passed there has leaked before
the program even starts. The check runs before argparse, because argparse's own errors echo
the offending argument back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from client._redact import looks_like_key

_KEY_FLAGS: Final = frozenset(
    {"--key", "--private-key", "--api-key", "--klaviyo-key", "--pk", "-k"}
)
_TOKEN_FLAGS: Final = frozenset({"--token", "--bearer-token", "--auth-token"})

KEY_REFUSAL: Final = (
    "refusing a Klaviyo private key on the command line: arguments are visible to every user "
    "of this machine in the process list and are saved in your shell history; pass it with "
    "--key-file PATH, or --key-file - to read it from stdin; if you typed a real key, delete "
    "it from your shell history (bash: history -d N) and consider rotating it in Klaviyo"
)
TOKEN_REFUSAL: Final = (
    "refusing a token on the command line (visible in the process list and shell history): "  # noqa: S105 - a message about tokens, not one.
    "set ELIDO_FORWARDER_TOKEN_FILE or ELIDO_FORWARDER_TOKEN, or pass --token-file PATH"
)


def secret_in_argv(argv: Sequence[str]) -> str | None:
    """The refusal message if ``argv`` carries a key or a token, else ``None``."""
    for arg in argv:
        if arg == "--":
            continue
        name = arg.split("=", 1)[0]
        if name in _KEY_FLAGS or looks_like_key(arg):
            return KEY_REFUSAL
        if name in _TOKEN_FLAGS:
            return TOKEN_REFUSAL
    return None
