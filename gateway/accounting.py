"""Everything booked once an answer has ended: its metrics, usage, limit reconciliation, cache write and,
for a routed request, its route's signals (what the rollout guard judges).

The serving layer describes each answer in an `Answer`; the policy opens a `Ticket` per request (who
pays, what was reserved, where a complete answer is stored). `Accounting.settle` books both: in
memory at once, then one Redis pipeline for everything booked so far. It runs as the response's
Starlette `BackgroundTask`, so the client has its last byte before any of it happens. While Redis is
unavailable the writes stay buffered (bounded) and go out with the next successful flush.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.access_log import current_record
from gateway.auth import Principal
from gateway.cache import ResponseCache, StreamAssembler
from gateway.cost import PriceTable
from gateway.format_check import check_answer
from gateway.limits import KeyRateLimiter, Reservation
from gateway.metrics import GatewayMetrics, PolicyMetrics
from gateway.redis_state import RedisState, flush_staged
from gateway.routes.spec import StoredRoute
from gateway.routes.stats import RouteStats
from gateway.usage import UsageStore

log = logging.getLogger("gateway.accounting")

NO_BACKEND = "-"  # the backend label of a request no replica answered
ERROR_OUTCOMES = frozenset({"backend_error", "timeout", "unavailable"})


@dataclass(slots=True)
class Answer:
    """What the serving layer learned about one answer (or one failed attempt to get it)."""

    model: str
    backend: str = NO_BACKEND
    # success | client_error | backend_error | timeout | unavailable | cancelled, or cache_hit (no backend call)
    outcome: str = "success"
    elapsed_s: float = 0.0
    backend_s: float | None = None  # a unary call's time inside the backend, for gateway_overhead_seconds
    ttft_s: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # arrived whole (every choice finished, no error)
    result: dict[str, Any] | None = None  # a non-streamed answer's response object ...
    body: bytes | None = None  # ... and the JSON bytes sent for it
    text: str | None = None  # the answer's text, when a response_format asks for it to be checked
    response_format: Any = None
    count_usage: bool = True  # False: failed before any backend answered (the reservation is still given back)


@dataclass(slots=True)
class Ticket:
    """One request's account: who pays, what was reserved, the cache key a complete answer goes to, and
    the route and variant it was sent to."""

    principal: Principal
    model: str  # the model to call first
    public: str = ""  # what the client asked for (a route's name, or the model); metrics' `model` label
    reservation: Reservation | None = None
    store_key: str = ""
    assembler: StreamAssembler | None = None  # a streamed answer rebuilt for the cache, when it may be stored
    route: StoredRoute | None = None
    variant: str | None = None  # the route's chosen variant (served model)
    version: str = ""  # `model` as the cache key names it (BackendPool.version)
    capture: Any = None  # this request is sampled for the inference log (gateway/store/records.CaptureContext)


class Accounting:
    def __init__(self, *, redis: RedisState, metrics: GatewayMetrics, policy_metrics: PolicyMetrics,
                 limiter: KeyRateLimiter, usage: UsageStore, cache: ResponseCache, prices: PriceTable,
                 route_stats: RouteStats) -> None:
        self.redis = redis
        self.metrics = metrics
        self.policy_metrics = policy_metrics
        self.limiter = limiter
        self.usage = usage
        self.cache = cache
        self.prices = prices
        self.route_stats = route_stats
        self._writing: asyncio.Future[bool] | None = None
        # Called with each settled answer of a sampled request (capture: gateway/store/capture.py); never awaits.
        self.on_settled: Callable[[Ticket, Answer], None] | None = None
        # A model's cache version now (BackendPool.version, wired at start-up): an answer is stored only
        # when the version its key names is still the one served.
        self.versions: Callable[[str], str] | None = None

    async def settle(self, ticket: Ticket | None, answer: Answer) -> None:
        """Book the answer and write what Redis must know (the BackgroundTask of every inference response)."""
        self.book(ticket, answer)
        if ticket is not None and ticket.capture is not None and self.on_settled is not None:
            self.on_settled(ticket, answer)
        await self.flush()

    def book(self, ticket: Ticket | None, answer: Answer) -> None:
        """The in-memory half of `settle`: metrics now, Redis writes buffered for the next `flush`."""
        try:
            self._observe(ticket.public if ticket is not None and ticket.public else answer.model, answer)
            if ticket is not None:
                self._charge(ticket, answer)
                if ticket.route is not None:
                    record = current_record()
                    record.route, record.route_version = ticket.route.name, ticket.route.version
                    self._signal(ticket, ticket.route, answer)
        except Exception:  # the client has its answer; a bookkeeping bug must not become a second error
            log.exception("booking an answer failed")

    async def flush(self) -> None:
        """Return once what was booked so far is in Redis (or kept buffered, Redis being unavailable).

        One pipeline in flight at a time: answers settled while it runs wait for it and then share the
        next one, so under load a write carries many answers instead of each paying a round trip."""
        if not self.redis.configured:
            return
        while self._pending():
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write())
            writing = self._writing
            await asyncio.shield(writing)
            if not writing.result():
                return  # Redis unavailable: the data stays buffered for a later flush

    def _pending(self) -> bool:
        return self.limiter.has_pending or self.usage.has_pending or self.cache.has_pending or \
            self.route_stats.has_pending

    async def _write(self) -> bool:
        try:
            return await flush_staged(self.redis, "account", [self.limiter.stage, self.usage.stage,
                                                              self.cache.stage, self.route_stats.stage])
        finally:
            self._writing = None

    # -- the two halves ------------------------------------------------------------------------

    def _observe(self, public: str, answer: Answer) -> None:
        """The answer's Prometheus series and access-log fields."""
        variant, backend, m = answer.model, answer.backend, self.metrics
        record = current_record()
        record.model = variant
        if answer.outcome == "cache_hit":
            return
        record.backend = None if backend == NO_BACKEND else backend
        m.requests.labels(public, backend, variant, answer.outcome).inc()
        if backend == NO_BACKEND:
            return
        model = public
        m.e2e_latency.labels(model, backend, variant).observe(answer.elapsed_s)
        usage = answer.usage
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        if usage:
            m.prompt_tokens.labels(model, backend, variant).inc(prompt)
            m.generation_tokens.labels(model, backend, variant).inc(completion)
            record.prompt_tokens, record.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if answer.ttft_s is not None:
            m.ttft.labels(model, backend, variant).observe(answer.ttft_s)
            if completion > 1:
                m.tpot.labels(model, backend, variant).observe((answer.elapsed_s - answer.ttft_s) / (completion - 1))
        if answer.backend_s is not None:
            m.overhead.labels(variant).observe(max(0.0, answer.elapsed_s - answer.backend_s))
        verdict = self._format_verdict(answer)
        if verdict is not None:
            m.format_compliance.labels(model, variant, verdict).inc()

    @staticmethod
    def _format_verdict(answer: Answer) -> str | None:
        if answer.outcome != "success" or answer.response_format is None or answer.text is None:
            return None
        return check_answer(answer.response_format, answer.text)

    def _signal(self, ticket: Ticket, route: StoredRoute, answer: Answer) -> None:
        """The route's signals for its guard: the chosen variant's outcome, and a fallback if one answered."""
        if answer.outcome in ("cache_hit", "cancelled", "client_error"):
            return  # says nothing about the variant's quality
        variant = ticket.variant or answer.model
        fell_back = answer.model != variant and answer.backend != NO_BACKEND
        error = fell_back or answer.outcome in ERROR_OUTCOMES
        ttft = answer.ttft_s if answer.ttft_s is not None else answer.elapsed_s
        self.route_stats.record_answer(route.name, route.version, variant, error=error,
                                       ttft_s=None if fell_back else ttft,
                                       format_verdict=None if fell_back else self._format_verdict(answer))
        if fell_back and answer.outcome == "success":
            self.metrics.route_fallbacks.labels(route.name, answer.model).inc()

    def _charge(self, ticket: Ticket, answer: Answer) -> None:
        """Usage, the limits' real token count, the hosted-API cost, and the cache write of a whole answer."""
        usage = answer.usage
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.limiter.reconcile(ticket.reservation, prompt + completion)
        if not answer.count_usage:
            return
        principal = ticket.principal
        self.usage.record(principal.key_id or principal.subject, ticket.model, prompt, completion)
        if prompt or completion:
            self.policy_metrics.hosted_cost.labels(ticket.model).inc(
                self.prices.hosted_cost(ticket.model, prompt, completion))
        stored = self._storable(ticket, answer)
        if stored is not None:
            self.cache.put_later(ticket.store_key, stored)

    def _storable(self, ticket: Ticket, answer: Answer) -> dict[str, Any] | bytes | None:
        """What goes into the cache: only a complete, successful answer the request allows storing."""
        if not ticket.store_key or answer.outcome != "success" or not answer.complete:
            return None
        if answer.model != ticket.model:  # a fallback answered: not what the key (the variant's) stands for
            return None
        if self.versions is not None and ticket.version and self.versions(ticket.model) != ticket.version:
            return None  # a new adapter version was registered meanwhile: which one answered is not known
        if answer.result is not None:
            return answer.body if answer.body is not None else answer.result
        assembler = ticket.assembler
        if assembler is None or not assembler.complete:
            return None
        if answer.usage:
            assembler.usage = answer.usage
        return assembler.response()
