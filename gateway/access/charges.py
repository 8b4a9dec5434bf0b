"""What an answer costs its caller, booked after the client has it: the limits' real token count (the
reservation reconciled), usage per key, model and day, the hosted-API cost, and the cache write of a
complete answer. All in memory now; the Redis writes go out with the next write-behind flush
(gateway/state/write_behind.py)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.access.cache import ResponseCache
from gateway.access.cost import PriceTable
from gateway.access.limits import KeyRateLimiter, Reservation
from gateway.access.principal import Principal
from gateway.access.usage import UsageStore
from gateway.observability.metrics import GatewayMetrics
from gateway.protocol.answer import Answer


class Charges:
    def __init__(
        self,
        *,
        limiter: KeyRateLimiter,
        usage: UsageStore,
        cache: ResponseCache,
        prices: PriceTable,
        metrics: GatewayMetrics,
        versions: Callable[[str], str],
    ) -> None:
        """`versions`: a model's cache version now (the replicas' adapter digests): an answer is stored only
        when the version its cache key names is still the one served."""
        self.limiter = limiter
        self.usage = usage
        self.cache = cache
        self.prices = prices
        self.metrics = metrics
        self.versions = versions

    def charge(
        self,
        principal: Principal,
        model: str,
        reservation: Reservation | None,
        answer: Answer,
        *,
        store_key: str = "",
        version: str = "",
    ) -> None:
        """Book `answer` to `principal`; `model` is the one that was to answer (the cache key's),
        `store_key` where a complete answer goes ("": nowhere)."""
        usage = answer.usage
        prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
        self.limiter.reconcile(reservation, prompt + completion)
        if not answer.answered:
            return
        self.usage.record(principal.key_id or principal.subject, model, prompt, completion)
        if prompt or completion:
            self.metrics.hosted_cost.labels(model).inc(self.prices.hosted_cost(model, prompt, completion))
        if not store_key or answer.model != model:  # a fallback answered: not what the key stands for
            return
        if version and self.versions(model) != version:
            return  # a new adapter version was registered meanwhile: which one answered is not known
        whole = answer.whole()
        if whole is not None:
            self.cache.store(store_key, whole)
