"""The access and traffic policy around one inference call: limits -> cache -> call -> account.

Authentication happens earlier (the `authenticate` dependency); `Policy.serve` gets the caller's
`Principal` and the resolved model, reserves RPM/TPM/budget, answers from the cache or calls
the backend, and afterwards reconciles tokens, records usage and cost and stores complete
answers. Accounting runs in a task after the response, so it never delays the client and a
client disconnect cannot cancel it half-way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from prometheus_client import CollectorRegistry
from starlette.responses import Response, StreamingResponse

from gateway.auth import Authenticator, Principal, raw_header
from gateway.cache import CacheDecision, ResponseCache, StreamAssembler, cache_key, decide, replay_sse
from gateway.cache_presence import CachePresence
from gateway.cost import PriceTable
from gateway.fast_metrics import Counter, Gauge
from gateway.jwt_tokens import JwksCache, JwtConfig, JwtVerifier, jwt_from_settings
from gateway.keys import CachedKeyLookup, KeyStore, MemoryKeyStore, RedisKeyStore
from gateway.limits import AnonymousLimiter, KeyLimits, KeyRateLimiter, Reservation, estimate_tokens
from gateway.protocol import FinalPart
from gateway.redis_state import RedisState, flush_staged
from gateway.serving import SSE_HEADERS, AnswerObserver
from gateway.usage import UsageStore

log = logging.getLogger("gateway.policy")

BYPASS = CacheDecision(False, False)
DEV_PEPPER = "development-pepper-not-for-production"


class PolicyMetrics:
    def __init__(self, registry: CollectorRegistry, gpu_monthly_usd: float) -> None:
        self.cache = Counter("gateway_cache_requests", "Inference requests by cache result.",
                             ("model", "result"), registry=registry)
        self.rate_limited = Counter("gateway_rate_limited", "Requests refused by a limit.", ("kind",),
                                    registry=registry)
        self.redis_errors = Counter("gateway_redis_errors", "Failed Redis calls by operation.", ("operation",),
                                    registry=registry)
        self.hosted_cost = Counter("gateway_hosted_api_cost_usd", "What the served tokens would have cost "
                                   "on the hosted API.", ("model",), registry=registry)
        self.gpu_monthly = Gauge("gateway_gpu_monthly_cost_usd", "Configured monthly cost of the GPU box.",
                                 registry=registry)
        self.gpu_monthly.set(gpu_monthly_usd)
        self.cache_index_ready = Gauge("gateway_cache_index_ready", "1 while the cache-key index is in step with "
                                       "Redis (cache reads of unstored answers skipped), else 0.", registry=registry)
        self.cache_index_keys = Gauge("gateway_cache_index_keys", "Cache-key writes the index heard of within the "
                                      "TTL (a key written twice counts twice).", registry=registry)
        for kind in ("rpm", "tpm", "budget"):
            self.rate_limited.labels(kind)
        for op in ("key_lookup", "rate_limit", "cache_get", "account", "ping"):
            self.redis_errors.labels(op)

    def register_model(self, model: str) -> None:
        for result in ("hit", "miss", "bypass"):
            self.cache.labels(model, result)
        self.hosted_cost.labels(model)


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of input, for the pre-call token estimate."""
    if "messages" in body:
        total = 0
        for m in body["messages"]:
            content = m.get("content")
            total += len(content) if isinstance(content, str) else len(orjson.dumps(content)) if content else 0
        return total
    source = body.get("prompt", body.get("input", ""))
    return len(source) if isinstance(source, str) else sum(len(str(x)) for x in source)


def tokens_of(usage: dict[str, Any] | None) -> tuple[int, int]:
    usage = usage or {}
    return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def add_headers(response: Response, headers: dict[str, str]) -> None:
    """Append headers the response does not carry yet: straight onto its raw list (Starlette's
    MutableHeaders scans the whole list for every name it sets, several times per request here)."""
    response.raw_headers.extend([(name.lower().encode("latin-1"), value.encode("latin-1"))
                                 for name, value in headers.items()])


class _Bookkeeper:
    """The policy's AnswerObserver: assembles a streamed answer for the cache and books usage, limits
    and the cache write once the serving layer says the answer ended (whole or not)."""

    __slots__ = ("policy", "principal", "model", "reservation", "store_key", "assembler", "on_chunk")

    def __init__(self, policy: "Policy", principal: Principal, model: str, reservation: Reservation | None,
                 store_key: str, stream: bool) -> None:
        self.policy, self.principal, self.model = policy, principal, model
        self.reservation, self.store_key = reservation, store_key
        self.assembler = StreamAssembler() if store_key and stream else None
        self.on_chunk = self.assembler.add if self.assembler is not None else None  # chunks only matter to the cache

    def finished(self, usage: dict[str, Any], complete: bool, result: dict[str, Any] | None,
                 body: bytes | None = None) -> None:
        store = None
        if self.store_key and complete:
            if result is not None:  # a non-streamed answer: whole when every choice has a finish_reason
                whole = bool(result.get("data")) or all(c.get("finish_reason") for c in result.get("choices") or [{}])
                store = (self.store_key, body if body is not None else result) if whole else None
            elif self.assembler is not None and self.assembler.complete:
                if usage:
                    self.assembler.usage = usage
                store = (self.store_key, self.assembler.response())
        self.policy._account(self.principal, self.model, self.reservation, tokens_of(usage or None), store=store)


@dataclass
class Policy:
    redis: RedisState
    keys: KeyStore
    lookup: CachedKeyLookup
    authenticator: Authenticator
    jwt_config: JwtConfig | None
    limiter: KeyRateLimiter
    anonymous: AnonymousLimiter
    cache: ResponseCache
    usage: UsageStore
    prices: PriceTable
    metrics: PolicyMetrics
    cache_enabled: bool = True
    default_max_tokens: int = 256
    jwks: JwksCache | None = None
    flush_window_s: float = 0.01
    _flusher: asyncio.Future | None = None

    @classmethod
    def build(cls, settings: Any, registry: CollectorRegistry) -> "Policy":
        """Everything from settings; no connection is opened here (Redis connects lazily)."""
        metrics = PolicyMetrics(registry, settings.gpu_monthly_usd)
        redis = RedisState.from_url(settings.redis_url, timeout_s=settings.redis_timeout_s,
                                    retry_after_s=settings.redis_retry_s,
                                    on_error=lambda op: metrics.redis_errors.labels(op).inc())
        pepper = settings.key_pepper.get_secret_value() if settings.key_pepper else DEV_PEPPER
        if not settings.key_pepper:
            log.warning("GATEWAY_KEY_PEPPER is not set: API-key hashes use a development pepper")
        keys: KeyStore = RedisKeyStore(redis, pepper) if redis.configured else MemoryKeyStore(pepper)
        lookup = CachedKeyLookup(keys, pepper, fresh_s=settings.key_cache_s, stale_s=settings.key_stale_s)
        jwt_config = jwt_from_settings(settings)
        jwks = JwksCache(jwt_config.jwks_url) if jwt_config is not None and jwt_config.jwks_url else None
        verifier = JwtVerifier(jwt_config, jwks) if jwt_config is not None else None
        admin = (settings.admin_key.get_secret_value() if settings.admin_key else "") or None
        authenticator = Authenticator(keys=lookup, jwt=verifier, admin_key=admin,
                                      default_rpm=settings.jwt_default_rpm, default_tpm=settings.jwt_default_tpm)
        cache = ResponseCache(redis, ttl_s=settings.cache_ttl_s, max_entry_bytes=settings.cache_max_entry_bytes)
        if redis.wire is not None and settings.cache_enabled and settings.cache_index:
            def on_state(ready: bool, keys: int) -> None:
                metrics.cache_index_ready.set(1 if ready else 0)
                metrics.cache_index_keys.set(keys)

            cache.presence = CachePresence(redis.wire, ttl_s=settings.cache_ttl_s, on_state=on_state)
        return cls(
            redis=redis, keys=keys, lookup=lookup, authenticator=authenticator, jwt_config=jwt_config,
            limiter=KeyRateLimiter(redis, on_limited=lambda kind: metrics.rate_limited.labels(kind).inc()),
            anonymous=AnonymousLimiter(settings.anonymous_rpm, redis),
            cache=cache,
            usage=UsageStore(redis),
            prices=PriceTable(default=settings.price_default, models=dict(settings.prices),
                              gpu_monthly_usd=settings.gpu_monthly_usd),
            metrics=metrics, cache_enabled=settings.cache_enabled,
            default_max_tokens=settings.default_max_tokens_estimate, jwks=jwks,
        )

    def start(self) -> None:
        """Background work that needs the running loop: the cache-key index."""
        if self.cache.presence is not None:
            self.cache.presence.start()

    async def aclose(self) -> None:
        if self.cache.presence is not None:
            await self.cache.presence.aclose()
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=2.0)
        self.limiter.give_back_leases()
        if self.redis.usable:
            await flush_staged(self.redis, "account", [self.limiter.stage, self.usage.stage, self.cache.stage])
        await self.redis.close()
        if self.jwks is not None:
            await self.jwks.aclose()

    # -- the request path -----------------------------------------------------------------------

    async def serve(self, request: Request, principal: Principal, *, endpoint: str, req: Any, model: str,
                    call: Callable[[AnswerObserver], Awaitable[Response]]) -> Response:
        """Limits -> cache -> `call(observer)` -> accounting (when the observer hears the answer end)."""
        body = req.model_dump(exclude_none=True)
        decision = self._decide(request, body, endpoint)
        key = cache_key(endpoint, model, body) if not decision.bypass else ""
        reservation, hit = await self._reserve_and_read(principal, req, body, key if decision.read else None)
        extra_headers = reservation.headers() if reservation else {}
        stream = bool(body.get("stream"))
        if hit is not None:
            self.metrics.cache.labels(model, "hit").inc()
            response = self._from_cache(hit, stream, getattr(req, "include_usage", False), extra_headers)
            # Booked after the answer went out, as a miss's answer is (the front layer queues `background`).
            response.background = lambda: self._account(principal, model, reservation, None)  # type: ignore[assignment]
            return response
        self.metrics.cache.labels(model, "bypass" if decision.bypass else "miss").inc()
        store_key = key if decision.write else ""
        books = _Bookkeeper(self, principal, model, reservation, store_key, stream)
        try:
            response = await call(books)
        except BaseException:
            self._account(principal, model, reservation, (0, 0), count_request=False)
            raise
        add_headers(response, {"X-Cache": "BYPASS" if decision.bypass else "MISS", **extra_headers})
        return response

    async def _reserve_and_read(self, principal: Principal, req: Any, body: dict[str, Any],
                                read_key: str | None) -> tuple[Reservation | None, bytes | None]:
        """RPM/TPM/budget reservation and the cache read: from this process's lease and without the read
        where the cache cannot hold the answer (no Redis round trip), else in one round trip for both."""
        if read_key is not None and not self.cache.may_hold(read_key):
            read_key = None  # a certain miss: nobody stored this answer within the cache's lifetime
        limits = KeyLimits(principal.rpm, principal.tpm, principal.monthly_token_budget)
        if not limits.any:
            return None, await self.cache.get_raw(read_key) if read_key else None
        estimate = estimate_tokens(prompt_chars(body), getattr(req, "output_cap", 0), self.default_max_tokens)
        reservation = self.limiter.leased(principal.subject, limits, estimate)
        if reservation is not None:
            return reservation, await self.cache.get_raw(read_key) if read_key else None
        if read_key is not None and not self.redis.configured:
            reservation, _ = await self.limiter.reserve_and_get(principal.subject, limits, estimate, None)
            return reservation, self.cache.memory_get(read_key)
        return await self.limiter.reserve_and_get(principal.subject, limits, estimate, read_key)

    def _decide(self, request: Request, body: dict[str, Any], endpoint: str) -> CacheDecision:
        if not self.cache_enabled or not self.cache.available:
            return BYPASS
        return decide(body, raw_header(request, b"cache-control"), raw_header(request, b"x-gateway-cache"),
                      deterministic_endpoint=endpoint == "embeddings")

    @staticmethod
    def _from_cache(raw: bytes, stream: bool, include_usage: bool, headers: dict[str, str]) -> Response:
        headers = {**headers, "X-Cache": "HIT"}
        if stream:
            whole = FinalPart(b"".join(replay_sse(orjson.loads(raw), include_usage=include_usage)))

            async def body() -> AsyncIterator[bytes]:
                yield whole  # the stored answer is all here: one write

            return StreamingResponse(body(), media_type="text/event-stream", headers={**SSE_HEADERS, **headers})
        return Response(raw, media_type="application/json", headers=headers)

    # -- accounting ------------------------------------------------------------------------------

    def _account(self, principal: Principal, model: str, reservation: Reservation | None,
                 usage: tuple[int, int] | None, *, store: tuple[str, dict | bytes] | None = None,
                 count_request: bool = True) -> None:
        """Book a finished request in memory; Redis gets it in the next batched write.

        usage None: answered from the cache (no backend tokens).
        """
        prompt, completion = usage or (0, 0)
        self.limiter.reconcile(reservation, prompt + completion)
        if count_request:
            self.usage.record(principal.key_id or principal.subject, model, prompt, completion)
        if prompt or completion:
            self.metrics.hosted_cost.labels(model).inc(self.prices.hosted_cost(model, prompt, completion))
        if store is not None:
            self.cache.put_later(*store)
        if self.redis.configured and self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        """Write everything booked so far in one pipeline; what is booked meanwhile goes next.

        One write in flight at a time, at most one per batching window: under load a batch grows
        instead of the number of round trips (flushing again as soon as a write returned made one
        pipeline per one or two requests at 2000 req/s), and the write stays off the request path.
        """
        try:
            while True:
                await asyncio.sleep(self.flush_window_s)
                if not await flush_staged(self.redis, "account",
                                          [self.limiter.stage, self.usage.stage, self.cache.stage]):
                    break  # Redis unavailable: the data stays booked; the next request starts a new flusher
                if not (self.limiter.has_pending or self.usage.has_pending or self.cache.has_pending):
                    break
        except Exception:  # accounting must never take the gateway down
            log.exception("writing usage and limits to Redis failed")
        finally:
            self._flusher = None
