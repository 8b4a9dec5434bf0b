"""Exact-match response cache: key from the full normalised request, values in Redis.

Key: blake2b over the request body as sorted-key JSON, with `model` replaced by the resolved
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import orjson

from gateway.protocol import SSE_DONE
from gateway.redis_state import RedisState, RedisUnavailable, flush_staged

FRAMING_FIELDS = frozenset({"stream", "stream_options"})


@dataclass(frozen=True, slots=True)
class CacheDecision:
    read: bool
    write: bool

    @property
    def bypass(self) -> bool:
        return not (self.read or self.write)


def decide(body: Mapping[str, object], cache_control: str | None, opt_in: str | None, *,
           deterministic_endpoint: bool = False) -> CacheDecision:
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


def cache_key(endpoint: str, model_version: str, body: Mapping[str, object]) -> str:
    """A stable digest of everything that can change the answer."""
    normalised = {k: (int(v) if type(v) is float and v.is_integer() else v)  # 1.0 == 1
                  for k, v in body.items() if v is not None and k not in FRAMING_FIELDS}
    normalised["model"] = model_version
    digest = hashlib.blake2b(orjson.dumps(normalised, option=orjson.OPT_SORT_KEYS), digest_size=20)
    return f"gw:cache:{endpoint}:{digest.hexdigest()}"


class ResponseCache:
    """Stores complete answers; Redis when configured, a bounded in-process LRU otherwise.

    While Redis is configured but unavailable the cache is bypassed (reads miss, writes drop)
    rather than filling process memory.
    """

    def __init__(self, redis: RedisState, *, ttl_s: int = 3600, max_entry_bytes: int = 256 * 1024,
                 memory_entries: int = 1024, memory_bytes: int = 32 * 1024 * 1024) -> None:
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

    async def get(self, key: str) -> dict | None:
        raw = await self.get_raw(key)
        return orjson.loads(raw) if raw else None

    async def get_raw(self, key: str) -> bytes | None:
        """The stored answer as JSON bytes (served as is for a non-streamed hit)."""
        if not self.redis.configured:
            return self.memory_get(key)
        try:
            return await self.redis.run("cache_get", lambda r: r.get(key))
        except RedisUnavailable:
            return None

    def memory_get(self, key: str) -> bytes | None:
        hit = self._memory.get(key)
        return hit[1] if hit is not None and hit[0] >= time.monotonic() else None

    async def put(self, key: str, response: Mapping[str, object]) -> bool:
        """Store a complete answer now; False when it is too large or the store is unavailable."""
        if not self.put_later(key, response):
            return False
        if self.redis.configured:
            return await flush_staged(self.redis, "cache_put", [self.stage])
        return True

    def put_later(self, key: str, response: Mapping[str, object] | bytes) -> bool:
        """Buffer a complete answer (or its JSON bytes, when already serialised for the client) for the
        next `stage` (with Redis) or store it in memory."""
        raw = response if isinstance(response, bytes) else orjson.dumps(response)
        if len(raw) > self.max_entry_bytes:
            return False
        if self.redis.configured:
            if len(self._pending) >= self.max_pending:
                return False
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

    def stage(self, pipe) -> Callable[[], None]:  # noqa: ANN001
        """Queue buffered answers on `pipe`; on failure they are dropped (a cache may forget)."""
        pending, self._pending = self._pending, {}
        for key, raw in pending.items():
            pipe.set(key, raw, ex=self.ttl_s)
        return lambda: None


def _sse(payload: Mapping[str, object]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def replay_sse(response: Mapping[str, object], *, include_usage: bool = False) -> Iterator[bytes]:
    """An OpenAI SSE stream rebuilt from a stored complete answer (same content, own chunking)."""
    chat = response.get("object") == "chat.completion"
    base = {"id": response.get("id"), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": response.get("created"), "model": response.get("model")}
    if response.get("system_fingerprint") is not None:
        base["system_fingerprint"] = response["system_fingerprint"]
    for choice in response.get("choices", []):  # type: ignore[union-attr]
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            first = {"role": message.get("role", "assistant"), "content": message.get("content") or ""}
            if message.get("tool_calls"):
                first["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
            yield _sse({**base, "choices": [{"index": index, "delta": first, "finish_reason": None}]})
            yield _sse({**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]})
        else:
            yield _sse({**base, "choices": [{"index": index, "text": choice.get("text", ""), "logprobs": None,
                                             "finish_reason": choice.get("finish_reason")}]})
    if include_usage and response.get("usage") is not None:
        yield _sse({**base, "choices": [], "usage": response["usage"]})
    yield SSE_DONE


class StreamAssembler:
    """Builds the complete answer from streamed chunks so a finished stream can be cached.

    `complete` is true only when every choice got a finish_reason and no error arrived; a cut
    or failed stream is never stored.
    """

    def __init__(self) -> None:
        self.head: dict = {}
        self.usage: dict | None = None
        self.failed = False
        self._text: dict[int, list[str]] = {}
        self._role: dict[int, str] = {}
        self._finish: dict[int, str | None] = {}
        self._chat = True

    def add(self, chunk: Mapping[str, object]) -> None:
        if "error" in chunk:
            self.failed = True
            return
        if not self.head:
            self._chat = chunk.get("object") == "chat.completion.chunk"
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = dict(chunk["usage"])  # type: ignore[arg-type]
        for choice in chunk.get("choices") or []:  # type: ignore[union-attr]
            index = choice.get("index", 0)
            delta = (choice.get("delta") or {}) if self._chat else {"content": choice.get("text")}
            if delta.get("tool_calls"):
                self.failed = True  # tool-call deltas are not reassembled; do not cache them
            if delta.get("role"):
                self._role[index] = delta["role"]
            if delta.get("content"):
                self._text.setdefault(index, []).append(delta["content"])
            if choice.get("finish_reason") is not None:
                self._finish[index] = choice["finish_reason"]
            else:
                self._finish.setdefault(index, None)

    @property
    def complete(self) -> bool:
        return not self.failed and bool(self._finish) and all(v is not None for v in self._finish.values())

    def response(self) -> dict:
        choices = []
        for index in sorted(self._finish):
            text = "".join(self._text.get(index, []))
            if self._chat:
                message = {"role": self._role.get(index, "assistant"), "content": text}
                choices.append({"index": index, "message": message, "finish_reason": self._finish[index]})
            else:
                choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": self._finish[index]})
        body = {**{k: v for k, v in self.head.items() if v is not None},
                "object": "chat.completion" if self._chat else "text_completion", "choices": choices}
        if self.usage is not None:
            body["usage"] = self.usage
        return body
