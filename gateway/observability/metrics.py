"""Every Prometheus series the gateway exports, on one registry per app: the catalogue in one place.

Names follow vLLM's (`time_to_first_token_seconds`, `e2e_request_latency_seconds`,
`prompt_tokens_total`, ...) under a `gateway_` prefix. Labels stay bounded: `model`, `variant`,
`backend` and `route` come from configuration and discovery, never from prompts; key ids appear only in
the budget series, bounded by GATEWAY_BUDGET_METRIC_MAX_KEYS. `model`
is what the client asked for (a route's name, or the model itself) and `variant` the model that
answered. `multiprocess_mode` says how the workers' values combine when GATEWAY_WORKERS > 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.protocol.answer import NO_BACKEND, OUTCOMES, Answer

# vLLM's buckets, extended downwards: a small model on a GPU answers in milliseconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
TPOT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
REDIS_OPERATIONS = ("key_lookup", "rate_limit", "cache_get", "account", "ping")


class GatewayMetrics:
    """Every gateway series, registered on `registry` when constructed."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        gpu_monthly_usd: float = 0.0,
        budget_warning: float = 0.8,
        budget_critical: float = 0.95,
    ) -> None:
        self.registry = registry
        self._answer_series(registry)
        self._replica_series(registry)
        self._access_series(registry, gpu_monthly_usd)
        self._route_series(registry)
        self._log_series(registry)
        self._failure_series(registry)
        self._budget_series(registry, budget_warning, budget_critical)

    def _answer_series(self, registry: CollectorRegistry) -> None:
        """Requests and the answers they got."""
        mb = ("model", "backend")
        mbv = ("model", "backend", "variant")
        self.requests = Counter(
            "gateway_llm_requests", "LLM requests by outcome.", (*mbv, "outcome"), registry=registry
        )
        self.e2e_latency = Histogram(
            "gateway_e2e_request_latency_seconds",
            "End-to-end LLM request latency.",
            mbv,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time to first token (streamed).",
            mbv,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "gateway_time_per_output_token_seconds",
            "Time per output token after the first.",
            mbv,
            buckets=TPOT_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter("gateway_prompt_tokens", "Input tokens processed.", mbv, registry=registry)
        self.generation_tokens = Counter(
            "gateway_generation_tokens", "Output tokens generated.", mbv, registry=registry
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time spent in the gateway outside the backend call.",
            ("model",),
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "LLM requests being served.",
            mb,
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.format_compliance = Counter(
            "gateway_format_compliance",
            "Answers to JSON-format requests, by result (valid|invalid).",
            ("model", "variant", "result"),
            registry=registry,
        )
        self.format_unjudged = Counter(
            "gateway_format_checks_unjudged",
            "Answers to JSON-format requests left without a verdict, by why: the check ran out of time (time),"
            " too many checks were waiting (queue), the checking process died (failed).",
            ("reason",),
            registry=registry,
        )

    def _replica_series(self, registry: CollectorRegistry) -> None:
        """The replicas behind the gateway."""
        self.retries = Counter(
            "gateway_retries", "Attempts retried after a replica failed.", ("model",), registry=registry
        )
        self.failovers = Counter(
            "gateway_failovers",
            "Requests answered by another replica than the first tried.",
            ("model",),
            registry=registry,
        )
        self.circuit_state = Gauge(
            "gateway_circuit_state",
            "Circuit state per replica: 0 closed, 1 half-open, 2 open.",
            ("backend",),
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.backend_up = Gauge(
            "gateway_backend_up",
            "1 if the replica answered its last model-list call.",
            ("backend",),
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.waiting = Gauge(
            "gateway_requests_waiting",
            "Requests waiting in the gateway for a slot on a replica (every replica serving the model at its "
            "max_concurrency): with gateway_requests_in_flight, the load to scale model servers on.",
            ("model",),
            registry=registry,
            multiprocess_mode="livesum",
        )

    def _access_series(self, registry: CollectorRegistry, gpu_monthly_usd: float) -> None:
        """Access: the cache, limits, Redis, cost."""
        self.cache = Counter(
            "gateway_cache_requests", "Inference requests by cache result.", ("model", "result"), registry=registry
        )
        self.rate_limited = Counter(
            "gateway_rate_limited", "Requests refused by a limit.", ("kind",), registry=registry
        )
        self.redis_errors = Counter(
            "gateway_redis_errors", "Failed Redis calls by operation.", ("operation",), registry=registry
        )
        self.hosted_cost = Counter(
            "gateway_hosted_api_cost_usd",
            "What the served tokens would have cost on the hosted API.",
            ("model",),
            registry=registry,
        )
        self.gpu_monthly = Gauge(
            "gateway_gpu_monthly_cost_usd",
            "Configured monthly cost of the GPU box.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.gpu_monthly.set(gpu_monthly_usd)
        for kind in ("rpm", "tpm", "budget"):
            self.rate_limited.labels(kind)
        for op in REDIS_OPERATIONS:
            self.redis_errors.labels(op)

    def _route_series(self, registry: CollectorRegistry) -> None:
        """Model routes (bounded by configuration, like the model label)."""
        self.route_fallbacks = Counter(
            "gateway_route_fallbacks", "Routed requests a fallback answered.", ("route", "model"), registry=registry
        )
        self.shadow_requests = Counter(
            "gateway_shadow_requests",
            "Requests mirrored to a shadow variant, by result (ok|error|dropped).",
            ("route", "model", "result"),
            registry=registry,
        )
        self.shadow_latency = Histogram(
            "gateway_shadow_latency_seconds",
            "Shadow variants' answer time.",
            ("route", "model"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rollbacks = Counter(
            "gateway_rollbacks",
            "Canaries rolled back, by the signal that breached (error_rate|ttft_p95|format|thumbs_down) or manual.",
            ("route", "reason"),
            registry=registry,
        )
        self.route_weight = Gauge(
            "gateway_route_weight",
            "Current weight (%) of each variant of each route.",
            ("route", "variant"),
            registry=registry,
            multiprocess_mode="livemax",
        )

    def _log_series(self, registry: CollectorRegistry) -> None:
        """Feedback, the inference log, the judge."""
        self.feedback = Counter(
            "gateway_feedback",
            "User feedback on answers, by rating (up|down).",
            ("model", "variant", "rating"),
            registry=registry,
        )
        self.feedback_items = Counter(
            "gateway_feedback_items",
            "Feedback received, by kind (rating, score, comment, correction).",
            ("kind",),
            registry=registry,
        )
        self.capture_written = Counter(
            "gateway_capture_written", "Captured inferences written to the database.", registry=registry
        )
        self.capture_dropped = Counter(
            "gateway_capture_dropped",
            "Captured inferences dropped (queue_full: the "
            "database was slow or down; rejected: the database refused the batch).",
            ("reason",),
            registry=registry,
        )
        self.capture_queued = Gauge(
            "gateway_capture_queue",
            "Captured inferences waiting to be written.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.capture_write_errors = Counter(
            "gateway_capture_write_errors", "Failed batch writes (retried).", registry=registry
        )
        # Every worker reads the same rows: the judge gauges are the same in each.
        self.judge_score = Gauge(
            "gateway_judge_score",
            "Mean judge score (0..1) of the latest judge run.",
            ("route", "variant"),
            registry=registry,
            multiprocess_mode="max",
        )
        self.judge_baseline = Gauge(
            "gateway_judge_baseline_score",
            "Mean judge score of the route and variant's baseline run.",
            ("route", "variant"),
            registry=registry,
            multiprocess_mode="max",
        )
        self.dropped_writes = Counter(
            "gateway_dropped_writes",
            "Counts the gateway could not keep for Redis "
            "(it was away so long that the bounded buffer filled), by source "
            "(usage|limits|route_stats).",
            ("source",),
            registry=registry,
        )
        for reason in ("queue_full", "rejected"):
            self.capture_dropped.labels(reason)

    def _failure_series(self, registry: CollectorRegistry) -> None:
        """The gateway's own failures (each also logged once, with its context)."""
        self.internal_errors = Counter(
            "gateway_internal_errors",
            "Exceptions caught inside the gateway, by the "
            "component that caught them (see the log line with the same component).",
            ("component",),
            registry=registry,
        )
        for source in ("usage", "limits", "route_stats"):
            self.dropped_writes.labels(source)

    def _budget_series(self, registry: CollectorRegistry, warning: float, critical: float) -> None:
        """Budget use of the keys that have one (gateway/access/budget_use.py), and the alert thresholds, so the
        rules read them from the same settings as the gateway."""
        self.budget_used = Gauge(
            "gateway_key_budget_used_ratio",
            "Share of this month's token budget a key has used (1 = exhausted); only keys with a budget, "
            "at most GATEWAY_BUDGET_METRIC_MAX_KEYS of them, those nearest their budget.",
            ("key", "name", "owner", "month"),
            registry=registry,
            multiprocess_mode="max",
        )
        self.budget_unexported = Gauge(
            "gateway_key_budget_keys_unexported",
            "Keys with a budget left out of gateway_key_budget_used_ratio by its bound.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.budget_alert_ratio = Gauge(
            "gateway_key_budget_alert_ratio",
            "The shares of a monthly budget at which alerts fire, by level.",
            ("level",),
            registry=registry,
            multiprocess_mode="max",
        )
        for level, ratio in (("warning", warning), ("critical", critical), ("exhausted", 1.0)):
            self.budget_alert_ratio.labels(level).set(ratio)

    def show_budget_use(self, rows: Iterable[tuple[str, str, str, float]], month: str, unexported: int) -> None:
        """Replace the budget series with `rows` of (key id, name, owner, share used) for `month` (YYYY-MM)."""
        self.budget_used.clear()
        for key_id, name, owner, ratio in rows:
            self.budget_used.labels(key_id, name, owner, month).set(ratio)
        self.budget_unexported.set(unexported)

    def show_route_weights(self, routes: Mapping[str, Any]) -> None:
        """Every route's current weights (called whenever the routes are reloaded)."""
        self.route_weight.clear()
        for route in routes.values():
            for variant in route.spec.variants:
                self.route_weight.labels(route.name, variant.served).set(variant.weight)

    def register_backend(self, backend: str) -> None:
        """Create the per-replica series at start-up so dashboards show them before any traffic."""
        self.circuit_state.labels(backend).set(0)
        self.backend_up.labels(backend).set(0)

    def forget_backend(self, backend: str, models: Iterable[str]) -> None:
        """A replica that left (DNS discovery no longer finds it): its gauges go, so a dashboard does not show
        a replica that is gone as down. Its counters stay until the process restarts."""
        for gauge, labels in (
            (self.circuit_state, [(backend,)]),
            (self.backend_up, [(backend,)]),
            (self.in_flight, [(model, backend) for model in models]),
        ):
            for values in labels:
                with contextlib.suppress(KeyError):
                    gauge.remove(*values)

    def register_model(self, model: str, backend: str | None = None) -> None:
        """A model's series, before its first request (with the replica serving it, when one is named)."""
        if backend is not None:
            for outcome in OUTCOMES:
                self.requests.labels(model, backend, model, outcome)
            self.prompt_tokens.labels(model, backend, model)
            self.generation_tokens.labels(model, backend, model)
            self.in_flight.labels(model, backend)
            for rating in ("up", "down"):
                self.feedback.labels(model, model, rating)
            for result in ("valid", "invalid"):
                self.format_compliance.labels(model, model, result)
            return
        for result in ("hit", "miss", "bypass"):
            self.cache.labels(model, result)
        self.hosted_cost.labels(model)

    def observe_answer(self, public: str, answer: Answer, verdict: str | None) -> None:
        """An answer's series: `public` is what the client asked for, `verdict` its format check's result."""
        if answer.outcome == "cache_hit":
            return
        variant, backend = answer.model, answer.backend
        self.requests.labels(public, backend, variant, answer.outcome).inc()
        if backend == NO_BACKEND:
            return
        self.e2e_latency.labels(public, backend, variant).observe(answer.elapsed_s)
        usage = answer.usage
        completion = int(usage.get("completion_tokens") or 0)
        if usage:
            self.prompt_tokens.labels(public, backend, variant).inc(int(usage.get("prompt_tokens") or 0))
            self.generation_tokens.labels(public, backend, variant).inc(completion)
        if answer.ttft_s is not None:
            self.ttft.labels(public, backend, variant).observe(answer.ttft_s)
            if completion > 1:
                self.tpot.labels(public, backend, variant).observe(
                    (answer.elapsed_s - answer.ttft_s) / (completion - 1)
                )
        if answer.backend_s is not None:
            self.overhead.labels(variant).observe(max(0.0, answer.elapsed_s - answer.backend_s))
        if verdict is not None:
            self.format_compliance.labels(public, variant, verdict).inc()
