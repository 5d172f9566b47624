"""Time-ordered unique click ids (ULID: 48-bit milliseconds + 80 random bits).

Ids generated within one millisecond increment the random part, so that ids from one
process sort in generation order; the random part makes ids from different sidecars collide
with negligible probability. The 26-character Crockford base32 text fits the server's
click id syntax ``[A-Za-z0-9_.:-]{1,128}``.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Final

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS: Final = 80


class UlidGenerator:
    """Monotonic ULID generator (one per process; not thread-safe, asyncio needs none)."""

    __slots__ = ("_last_ms", "_last_random")

    def __init__(self) -> None:
        self._last_ms = -1
        self._last_random = 0

    def new(self, now_ms: int | None = None) -> str:
        """A new id, greater than every id this generator returned before."""
        ms = int(time.time() * 1000) if now_ms is None else now_ms
        if ms <= self._last_ms:
            # Same millisecond (or the clock stepped back): keep order by incrementing.
            ms = self._last_ms
            self._last_random += 1
            if self._last_random >> _RANDOM_BITS:
                ms += 1
                self._last_random = secrets.randbits(_RANDOM_BITS - 1)
        else:
            # One bit of headroom so that increments within a millisecond cannot overflow.
            self._last_random = secrets.randbits(_RANDOM_BITS - 1)
        self._last_ms = ms
        return _encode((ms << _RANDOM_BITS) | self._last_random)


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def derived_ulid(time_ms: int, content: bytes) -> str:
    """A ULID whose random part is a hash of ``content``.

    Used for records that carry their own timestamp but no click id: reading the same record
    twice (a stale log checkpoint, a proxy retrying a POST) yields the same id, which the
    forwarder deduplicates, instead of a second click.
    """
    digest = int.from_bytes(hashlib.blake2b(content, digest_size=10).digest(), "big")
    return _encode((time_ms << _RANDOM_BITS) | digest)
