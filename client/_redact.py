"""Scrubbing of anything that looks like a Klaviyo private key from text the client shows.

The server promises never to echo a key, and the client never puts one into a message of its
own; this is the second belt: error text that reaches logs, terminals and exception reprs is
passed through :func:`redact` so that a server bug (or a key pasted into a workspace id) cannot
turn into a leak on the caller's side.
"""

from __future__ import annotations

import re
from typing import Final

# Wider than the server's validation pattern on purpose: a truncated or slightly malformed key
# is still a secret worth hiding.
KEY_LIKE_PATTERN: Final = re.compile(r"pk_[A-Za-z0-9]{8,}")


def fingerprint(raw_key: str) -> str:
    """``pk_…3f9a`` for a key ending in ``3f9a`` (the form the server reports)."""
    return f"{raw_key[:3]}…{raw_key[-4:]}" if len(raw_key) >= 8 else "…"


def looks_like_key(text: str) -> bool:
    """True if ``text`` contains something shaped like a Klaviyo private key."""
    return KEY_LIKE_PATTERN.search(text) is not None


def redact(text: str) -> str:
    """``text`` with every key-like substring replaced by its fingerprint."""
    return KEY_LIKE_PATTERN.sub(lambda m: fingerprint(m.group(0)), text)
