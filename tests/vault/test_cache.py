"""The decrypted-key cache: TTL and LRU bound (a fake clock keeps this exact and instant)."""

from __future__ import annotations

from server.vault._cache import DecryptedKeyCache
from tests.vault.conftest import new_private_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_ttl_even_when_read() -> None:
    clock = Clock()
    cache = DecryptedKeyCache(ttl_s=10, max_entries=10, clock=clock)
    key = new_private_key()
    cache.put("ws", "vault:v1:a", key)
    clock.now += 9.9
    assert cache.get("ws", "vault:v1:a") == key
    clock.now += 0.1
    assert cache.get("ws", "vault:v1:a") is None
    assert len(cache) == 0


def test_keyed_by_ciphertext() -> None:
    cache = DecryptedKeyCache(ttl_s=10, max_entries=10)
    old, new = new_private_key(), new_private_key()
    cache.put("ws", "vault:v1:old", old)
    cache.put("ws", "vault:v1:new", new)
    assert cache.get("ws", "vault:v1:new") == new
    assert cache.get("ws", "vault:v1:other") is None
    assert cache.get("other-ws", "vault:v1:new") is None


def test_least_recently_used_goes_first() -> None:
    cache = DecryptedKeyCache(ttl_s=10, max_entries=2)
    keys = [new_private_key() for _ in range(3)]
    cache.put("a", "c", keys[0])
    cache.put("b", "c", keys[1])
    assert cache.get("a", "c") == keys[0]  # "b" is now the least recently used
    cache.put("c", "c", keys[2])
    assert cache.get("b", "c") is None
    assert cache.get("a", "c") == keys[0]
    assert cache.get("c", "c") == keys[2]


def test_forget_drops_only_that_workspace() -> None:
    cache = DecryptedKeyCache(ttl_s=10, max_entries=10)
    cache.put("a", "c1", new_private_key())
    cache.put("a", "c2", new_private_key())
    kept = new_private_key()
    cache.put("b", "c1", kept)
    cache.forget("a")
    assert cache.get("a", "c1") is None
    assert cache.get("a", "c2") is None
    assert cache.get("b", "c1") == kept


def test_zero_ttl_disables_caching() -> None:
    cache = DecryptedKeyCache(ttl_s=0, max_entries=10)
    cache.put("a", "c", new_private_key())
    assert cache.get("a", "c") is None


def test_repr_shows_no_keys() -> None:
    cache = DecryptedKeyCache(ttl_s=10, max_entries=10)
    key = new_private_key()
    cache.put("a", "c", key)
    assert key.reveal() not in repr(cache)
