"""The request path's view of the key store: a bounded in-process cache in front of it.

A hit younger than `fresh_s` skips Redis (the hot path, and the delay before a revocation made on
another replica is seen); a hit younger than `stale_s` is still honoured while Redis is unavailable
(degraded mode). Misses are never cached, so guessed keys cannot evict known ones.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.access.keys import ApiKey, KeyStore, hash_secret
from gateway.state.redis import RedisUnavailable


@dataclass(slots=True)
class _Cached:
    record: ApiKey
    at: float


@dataclass
class CachedKeyLookup:
    """Bounded in-process cache in front of a key store (see the module docstring)."""

    store: KeyStore
    pepper: str
    fresh_s: float = 5.0
    stale_s: float = 300.0
    max_entries: int = 10_000
    _entries: OrderedDict[str, _Cached] = field(default_factory=OrderedDict)
    # Keyed BLAKE2 digest of a presented secret -> its peppered HMAC, for secrets that matched a key.
    # Why: the HMAC goes through OpenSSL, whose code is cold again on every request when requests
    # come one at a time; BLAKE2 is built into Python and much cheaper cold. The key is random per
    # process, so the map holds nothing reusable elsewhere.
    _hashes: dict[bytes, str] = field(default_factory=dict)
    _salt: bytes = field(default_factory=lambda: os.urandom(32))

    async def find(self, secret: str) -> ApiKey | None:
        """The record for a presented plain key, or None."""
        raw = secret.encode()
        seen = hashlib.blake2b(raw, key=self._salt, digest_size=16).digest()
        secret_hash = self._hashes.get(seen) or hash_secret(secret, self.pepper)
        record = await self._cached(secret_hash, lambda: self.store.find_by_hash(secret_hash))
        if record is None or not hmac.compare_digest(record.secret_hash, secret_hash):
            return None
        if seen not in self._hashes:  # only secrets of real keys: guesses must not fill the map
            if len(self._hashes) >= self.max_entries:
                self._hashes.clear()
            self._hashes[seen] = secret_hash
        return record

    async def find_id(self, key_id: str) -> ApiKey | None:
        """The record for a key id (a JWT's `key_id` claim), or None."""
        return await self._cached("id:" + key_id, lambda: self.store.get(key_id))

    async def _cached(self, cache_key: str, fetch: Callable[[], Awaitable[ApiKey | None]]) -> ApiKey | None:
        now = time.monotonic()
        cached = self._entries.get(cache_key)
        if cached is not None and now - cached.at < self.fresh_s:
            return cached.record
        try:
            record = await fetch()
        except RedisUnavailable:
            # Degraded: only keys that were valid recently keep working; unknown keys are refused.
            if cached is not None and now - cached.at < self.stale_s:
                return cached.record
            raise
        if record is not None:  # misses are not cached: guesses must not evict known keys
            self._remember(cache_key, record, now)
        return record

    def _remember(self, cache_key: str, record: ApiKey, now: float) -> None:
        self._entries[cache_key] = _Cached(record, now)
        self._entries.move_to_end(cache_key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, record: ApiKey) -> None:
        """Drop a key from the cache so a change made here takes effect here at once."""
        self._entries.pop(record.secret_hash, None)
        self._entries.pop("id:" + record.id, None)
