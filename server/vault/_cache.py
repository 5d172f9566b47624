"""The short-lived, size-bounded cache of decrypted keys."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from server._secret import PrivateKey


class DecryptedKeyCache:
    """LRU with a TTL, keyed by (workspace id, ciphertext).

    Keying by the ciphertext, not just the workspace, means a re-registered or rewrapped key
    can never be answered with the plaintext of the ciphertext it replaced. Entries expire
    ``ttl_s`` after they were stored, however often they are read: the TTL bounds how long a
    key destroyed elsewhere (another replica) can still be used here.
    """

    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, PrivateKey]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DecryptedKeyCache(entries={len(self._entries)}, ttl_s={self._ttl_s})"

    def get(self, workspace_id: str, ciphertext: str) -> PrivateKey | None:
        entry_key = (workspace_id, ciphertext)
        entry = self._entries.get(entry_key)
        if entry is None:
            return None
        expires_at, key = entry
        if self._clock() >= expires_at:
            del self._entries[entry_key]
            return None
        self._entries.move_to_end(entry_key)
        return key

    def put(self, workspace_id: str, ciphertext: str, key: PrivateKey) -> None:
        if self._max_entries == 0 or self._ttl_s == 0:
            return
        entry_key = (workspace_id, ciphertext)
        self._entries[entry_key] = (self._clock() + self._ttl_s, key)
        self._entries.move_to_end(entry_key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, workspace_id: str) -> None:
        """Drop every entry of ``workspace_id``."""
        # A scan is fine: this runs on key removal/rotation, which is rare.
        for entry_key in [k for k in self._entries if k[0] == workspace_id]:
            del self._entries[entry_key]

    def clear(self) -> None:
        self._entries.clear()
