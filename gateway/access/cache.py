"""Exact-match response cache: key from the full normalised request, values in Redis.

Key: blake2b over the request body as sorted-key JSON and who may share the answer (by default the
caller's key: `GATEWAY_CACHE_SCOPE`), with `model` replaced by the resolved
model version (a LoRA adapter's name with its digest, `orders@sha256:...`: a new version registered
under the same name is another key), `stream`/`stream_options` removed (they change the framing, not the answer,
so a streamed request can be served from a stored answer), None values dropped and integral
floats folded (`1.0` == `1`). Every other field counts: leaving one out serves wrong answers.

Policy: only deterministic requests (temperature 0, or a seed) are read or written, unless
the client opts in with `X-Gateway-Cache: on`; `Cache-Control: no-cache` skips the read,
`no-store` skips the write. Only complete, successful answers are stored, each capped in
size and given a TTL (Redis' maxmemory policy bounds the total).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.state.redis import RedisState, RedisUnavailable

FRAMING_FIELDS = frozenset({"stream", "stream_options"})


@dataclass(frozen=True, slots=True)
class CacheDecision:
    read: bool
    write: bool

    @property
    def bypass(self) -> bool:
        return not (self.read or self.write)


def decide(
    body: Mapping[str, object], cache_control: str | None, opt_in: str | None, *, deterministic_endpoint: bool = False
) -> CacheDecision:
    """Whether this request may be answered from, and stored in, the cache.

    `deterministic_endpoint`: the endpoint has no sampling (embeddings), so it always qualifies.
    """
    directives = {d.strip().lower() for d in (cache_control or "").split(",")}
    choice = (opt_in or "").strip().lower()
    if choice == "off":
        return CacheDecision(False, False)
    temperature = body.get("temperature")
    deterministic = deterministic_endpoint or temperature == 0 or body.get("seed") is not None
    if not deterministic and choice != "on":
        return CacheDecision(False, False)
    return CacheDecision(read="no-cache" not in directives, write="no-store" not in directives)


def cache_key(endpoint: str, model_version: str, body: Mapping[str, object], scope: str = "") -> str:
    """A stable digest of everything that can change the answer, and of who may see it (`scope`: a key, an
    owner, or "" for everyone)."""
    normalised = {
        k: (int(v) if type(v) is float and v.is_integer() else v)  # 1.0 == 1
        for k, v in body.items()
        if v is not None and k not in FRAMING_FIELDS
    }
    normalised["model"] = model_version
    if scope:
        normalised["\x00scope"] = scope  # no request field has this name
    digest = hashlib.blake2b(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS), digest_size=20)
    return f"gw:cache:{endpoint}:{digest.hexdigest()}"


class ResponseCache:
    """Stores complete answers; Redis when configured, a bounded in-process LRU otherwise.

    While Redis is configured but unavailable the cache is bypassed (reads miss, writes drop)
    rather than filling process memory.
    """

    def __init__(
        self,
        redis: RedisState,
        *,
        ttl_s: int = 3600,
        max_entry_bytes: int = 256 * 1024,
        memory_entries: int = 1024,
        memory_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self.max_entry_bytes = max_entry_bytes
        self.memory_entries = memory_entries
        self.memory_bytes = memory_bytes  # total cap of the in-process store (no REDIS_URL)
        self._memory_bytes = 0
        self._memory: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._pending: dict[str, bytes] = {}
        self.max_pending = 256

    @property
    def available(self) -> bool:
        return not self.redis.configured or self.redis.usable

    async def read(self, key: str) -> bytes | None:
        """The stored answer as JSON bytes (served as is for a non-streamed hit)."""
        if not self.redis.configured:
            return self.memory_get(key)
        try:
            raw = await self.redis.run("cache_get", lambda r: r.get(key))
        except RedisUnavailable:
            return None
        return raw.encode() if isinstance(raw, str) else raw

    def memory_get(self, key: str) -> bytes | None:
        hit = self._memory.get(key)
        return hit[1] if hit is not None and hit[0] >= time.monotonic() else None

    def store(self, key: str, response: Mapping[str, object] | bytes) -> bool:
        """Keep a complete answer (or its JSON bytes, as sent to the client): buffered for the next
        write-behind flush with Redis, in memory without it. False when it is too large (or the buffer full)."""
        raw = response if isinstance(response, bytes) else orjson.dumps(response)
        if len(raw) > self.max_entry_bytes:
            return False
        if self.redis.configured:
            if len(self._pending) >= self.max_pending:
                return False  # a cache may forget: Redis is slow or away, the answer is not kept
            self._pending[key] = raw
            return True
        previous = self._memory.pop(key, None)
        self._memory_bytes += len(raw) - (len(previous[1]) if previous else 0)
        self._memory[key] = (time.monotonic() + self.ttl_s, raw)
        while len(self._memory) > self.memory_entries or self._memory_bytes > self.memory_bytes:
            self._memory_bytes -= len(self._memory.popitem(last=False)[1][1])
        return True

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def stage(self, pipe: Any) -> Callable[[], None]:
        """Queue buffered answers on `pipe`; on failure they are dropped (a cache may forget)."""
        pending, self._pending = self._pending, {}
        for key, raw in pending.items():
            pipe.set(key, raw, ex=self.ttl_s)
        return lambda: None
