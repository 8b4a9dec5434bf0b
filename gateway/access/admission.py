"""Admission, before a replica is called: the caller's limits reserved (requests, tokens, monthly budget)
and the response cache read, in one Redis round trip.

The token reservation is an estimate (prompt length / 4 + the output cap); the charges after the
answer (gateway/access/charges.py) replace it with the real count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from opentelemetry.trace import Tracer

from gateway.access.cache import CacheDecision, ResponseCache, cache_key, decide
from gateway.access.limits import KeyLimits, KeyRateLimiter, Reservation, estimate_tokens
from gateway.access.principal import Principal
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import DISABLED, stage_span
from gateway.protocol.requests import InferenceRequest

BYPASS = CacheDecision(False, False)


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


@dataclass(slots=True)
class Admitted:
    """A request let through: what was reserved, and the cache's part in it."""

    reservation: Reservation | None
    hit: bytes | None = None  # the stored answer, when the cache had it
    store_key: str = ""  # where a complete answer is stored ("": not stored)
    prompt_tokens: int = 0  # the prompt's estimated tokens (charged when a stream's usage never comes)
    bypass: bool = True  # the cache took no part (X-Cache: BYPASS)
    headers: dict[str, str] = field(default_factory=dict)  # X-RateLimit-*


class Admission:
    def __init__(
        self,
        *,
        limiter: KeyRateLimiter,
        cache: ResponseCache,
        metrics: GatewayMetrics,
        cache_enabled: bool = True,
        default_max_tokens: int = 256,
        cache_scope: str = "key",
        tracer: Tracer = DISABLED.tracer,
    ) -> None:
        self.cache_scope = cache_scope
        self.tracer = tracer
        self.limiter = limiter
        self.cache = cache
        self.metrics = metrics
        self.cache_enabled = cache_enabled
        self.default_max_tokens = default_max_tokens

    async def admit(
        self,
        principal: Principal,
        *,
        endpoint: str,
        req: InferenceRequest,
        body: dict[str, Any],
        model: str,
        version: str,
        cache_control: str | None,
        cache_choice: str | None,
    ) -> Admitted:
        """Reserve `principal`'s limits (or raise RateLimited) and read the cache, in its own span. `body`:
        the request as sent (`req` dumped); `model` the one to call first, `version` it as the cache keys it."""
        with stage_span(self.tracer, "admission"):
            return await self._admit(principal, endpoint, req, body, model, version, cache_control, cache_choice)

    async def _admit(
        self,
        principal: Principal,
        endpoint: str,
        req: InferenceRequest,
        body: dict[str, Any],
        model: str,
        version: str,
        cache_control: str | None,
        cache_choice: str | None,
    ) -> Admitted:
        decision = self._decide(body, endpoint, cache_control, cache_choice)
        key = cache_key(endpoint, version, body, self._scope(principal)) if not decision.bypass else ""
        limits = KeyLimits(principal.rpm, principal.tpm, principal.monthly_token_budget)
        read_key = key if decision.read else None
        prompt_tokens = estimate_tokens(prompt_chars(body), 0, 0)
        if not limits.any:
            reservation, hit = None, await self.cache.read(read_key) if read_key else None
        else:
            estimate = prompt_tokens + (getattr(req, "output_cap", None) or self.default_max_tokens)
            if read_key is not None and not self.cache.redis.configured:  # the cache is this process's
                reservation, _ = await self.limiter.reserve(principal.subject, limits, estimate)
                hit = self.cache.memory_get(read_key)
            else:
                reservation, hit = await self.limiter.reserve(principal.subject, limits, estimate, read_key)
        self.metrics.cache.labels(model, "hit" if hit is not None else "bypass" if decision.bypass else "miss").inc()
        return Admitted(
            prompt_tokens=prompt_tokens,
            reservation=reservation,
            hit=hit,
            store_key=key if decision.write else "",
            bypass=decision.bypass,
            headers=reservation.headers() if reservation else {},
        )

    def _scope(self, principal: Principal) -> str:
        """Who shares this caller's cached answers (GATEWAY_CACHE_SCOPE)."""
        if self.cache_scope == "shared":
            return ""
        if self.cache_scope == "owner" and principal.owner:
            return "owner:" + principal.owner
        return "key:" + (principal.key_id or principal.subject)

    async def count_refused(self, principal: Principal) -> None:
        """A request refused before admission (an unknown model) still counts against the caller's RPM
        (RateLimited when it is over)."""
        if principal.rpm:
            await self.limiter.reserve(principal.subject, KeyLimits(rpm=principal.rpm), 0)

    def _decide(
        self, body: dict[str, Any], endpoint: str, cache_control: str | None, cache_choice: str | None
    ) -> CacheDecision:
        if not self.cache_enabled or not self.cache.available:
            return BYPASS
        return decide(body, cache_control, cache_choice, deterministic_endpoint=endpoint == "embeddings")
