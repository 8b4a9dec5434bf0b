"""The access and traffic policy around one inference call: limits -> cache -> call -> account.

Authentication happens earlier (the `authenticate` dependency); `Policy.serve` gets the caller's
`Principal` and the resolved model, reserves RPM/TPM/budget, answers from the cache or calls
the backend. What happens after the answer (usage, reconciliation, cost, the cache write) is
gateway/accounting.py's, run as the response's background task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from prometheus_client import CollectorRegistry
from starlette.background import BackgroundTask
from starlette.responses import Response

from gateway.accounting import Accounting, Answer, Ticket
from gateway.auth import Authenticator, Principal, raw_header
from gateway.cache import CacheDecision, ResponseCache, StreamAssembler, cache_key, decide, replay_sse
from gateway.cost import PriceTable
from gateway.jwt_tokens import JwksCache, JwtConfig, JwtVerifier, jwt_from_settings
from gateway.keys import CachedKeyLookup, KeyStore, MemoryKeyStore, RedisKeyStore
from gateway.limits import AnonymousLimiter, KeyLimits, KeyRateLimiter, Reservation, estimate_tokens
from gateway.metrics import GatewayMetrics, PolicyMetrics
from gateway.redis_state import RedisState
from gateway.routes.stats import RouteStats
from gateway.routes.store import RouteStore
from gateway.routes.targeting import Target
from gateway.serving import AnswerStream, outcome_of
from gateway.usage import UsageStore

log = logging.getLogger("gateway.policy")

BYPASS = CacheDecision(False, False)
DEV_PEPPER = "development-pepper-not-for-production"


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
    accounting: Accounting
    routes: RouteStore
    cache_enabled: bool = True
    default_max_tokens: int = 256
    jwks: JwksCache | None = None

    @classmethod
    def build(cls, settings: Any, registry: CollectorRegistry, gateway_metrics: GatewayMetrics) -> "Policy":
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
        limiter = KeyRateLimiter(redis, on_limited=lambda kind: metrics.rate_limited.labels(kind).inc())
        usage = UsageStore(redis)
        prices = PriceTable(default=settings.price_default, models=dict(settings.prices),
                            gpu_monthly_usd=settings.gpu_monthly_usd)
        accounting = Accounting(redis=redis, metrics=gateway_metrics, policy_metrics=metrics, limiter=limiter,
                                usage=usage, cache=cache, prices=prices, route_stats=RouteStats(redis))
        return cls(
            redis=redis, keys=keys, lookup=lookup, authenticator=authenticator, jwt_config=jwt_config,
            limiter=limiter, anonymous=AnonymousLimiter(settings.anonymous_rpm, redis), cache=cache, usage=usage,
            prices=prices, metrics=metrics, accounting=accounting, routes=RouteStore(redis), cache_enabled=settings.cache_enabled,
            default_max_tokens=settings.default_max_tokens_estimate, jwks=jwks,
        )

    async def aclose(self) -> None:
        await self.accounting.flush()
        await self.redis.close()
        if self.jwks is not None:
            await self.jwks.aclose()

    # -- the request path -----------------------------------------------------------------------

    async def serve(self, request: Request, principal: Principal, *, endpoint: str, req: Any, target: Target,
                    call: Callable[[Ticket], Awaitable[Response]], capture: Any = None) -> Response:
        """Limits -> cache -> `call(ticket)`; the response's background task settles the ticket.
        `capture`: this request is sampled for the inference log (a streamed answer is then reassembled)."""
        model = target.model
        body = req.model_dump(exclude_none=True)
        decision = self._decide(request, body, endpoint)
        # The variant's model, never the route; an adapter with its digest (a new version is another key).
        version = target.version or model
        key = cache_key(endpoint, version, body) if not decision.bypass else ""
        reservation, hit = await self._reserve_and_read(principal, req, body, key if decision.read else None)
        extra_headers = reservation.headers() if reservation else {}
        stream = bool(body.get("stream"))
        ticket = Ticket(principal=principal, model=model, public=target.public, reservation=reservation,
                        route=target.route, variant=target.variant, capture=capture, version=version)
        if hit is not None:
            self.metrics.cache.labels(model, "hit").inc()
            extra_headers["X-Model-Variant"] = model
            settle = BackgroundTask(self.accounting.settle, ticket, Answer(model=model, outcome="cache_hit"))
            return self._from_cache(hit, stream, getattr(req, "include_usage", False), extra_headers, settle)
        self.metrics.cache.labels(model, "bypass" if decision.bypass else "miss").inc()
        if decision.write:
            ticket.store_key = key
            ticket.assembler = StreamAssembler() if stream else None
        if capture is not None and stream and ticket.assembler is None:
            ticket.assembler = StreamAssembler()  # not stored (no store_key): only for the captured text
        t0 = time.perf_counter()
        try:
            response = await call(ticket)
        except BaseException as exc:  # no answer: the reservation is given back, the failure counted
            failed = Answer(model=model, outcome=outcome_of(exc), elapsed_s=time.perf_counter() - t0,
                            count_usage=False)
            self.accounting.book(ticket, failed)
            if not isinstance(exc, asyncio.CancelledError):
                await self.accounting.flush()
            raise
        response.headers.update({"X-Cache": "BYPASS" if decision.bypass else "MISS", **extra_headers})
        return response

    async def _reserve_and_read(self, principal: Principal, req: Any, body: dict[str, Any],
                                read_key: str | None) -> tuple[Reservation | None, bytes | None]:
        """RPM/TPM/budget reservation and the cache read, in one Redis round trip."""
        limits = KeyLimits(principal.rpm, principal.tpm, principal.monthly_token_budget)
        if not limits.any:
            return None, await self.cache.get_raw(read_key) if read_key else None
        estimate = estimate_tokens(prompt_chars(body), getattr(req, "output_cap", 0), self.default_max_tokens)
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
    def _from_cache(raw: bytes, stream: bool, include_usage: bool, headers: dict[str, str],
                    settle: BackgroundTask) -> Response:
        headers = {**headers, "X-Cache": "HIT"}
        if stream:
            whole = b"".join(replay_sse(orjson.loads(raw), include_usage=include_usage))

            async def body() -> AsyncIterator[bytes]:
                yield whole  # the stored answer is all here: one write

            return AnswerStream(body(), settle=settle, headers=headers)
        return Response(raw, media_type="application/json", headers=headers, background=settle)
