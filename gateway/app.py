"""Wiring only: every long-lived object built once, complete, from the settings (nothing connects here),
put on `app.state`, started and stopped by the lifespan; then the routers, error handlers and middleware.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics

from gateway.access.admission import Admission
from gateway.access.authenticate import Authenticator
from gateway.access.cache import ResponseCache
from gateway.access.charges import Charges
from gateway.access.cost import PriceTable
from gateway.access.jwt import JwksCache, JwtVerifier, jwt_from_settings
from gateway.access.key_lookup import CachedKeyLookup
from gateway.access.keys import KeyStore, MemoryKeyStore, RedisKeyStore, pepper_of
from gateway.access.limits import AnonymousLimiter, KeyRateLimiter
from gateway.access.tokens import TokenIssuer
from gateway.access.usage import UsageStore
from gateway.adapters.leases import AdapterLeases
from gateway.adapters.registry import AdapterRegistry
from gateway.api import ops, token
from gateway.api.admin import adapters, inferences, keys, routes
from gateway.api.errors import install_error_handlers
from gateway.api.middleware.body_limit import BodyLimitMiddleware
from gateway.api.middleware.request_id import RequestIdMiddleware
from gateway.api.middleware.request_log import AccessLogMiddleware
from gateway.api.v1 import feedback, inference, models, usage
from gateway.model_routes.guard import Guardian
from gateway.model_routes.stats import RouteStats
from gateway.model_routes.store import RouteStore
from gateway.model_routes.table import RouteTable
from gateway.model_routes.targeting import Targeting
from gateway.observability.access_log import AccessLog, RecentRequests
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.tracing import exporter_from_env, setup_tracing
from gateway.pipeline.capture import Capture
from gateway.pipeline.feedback import FeedbackDesk
from gateway.pipeline.inference import InferencePipeline
from gateway.pipeline.shadow import ShadowMirror
from gateway.protocol.structured import Verdicts
from gateway.replicas.build import build_pool
from gateway.replicas.call import ReplicaCaller
from gateway.settings import Settings
from gateway.state.redis import RedisState
from gateway.state.write_behind import WriteBehind
from gateway.store.runtime import StoreRuntime

# Probes and scrapes would dominate the request rate and say nothing about the API.
UNMEASURED_HANDLERS = ["/metrics", "/healthz", "/readyz"]
# Young-generation threshold: one collection per 7,000 net allocations instead of CPython's 700. A request
# allocates thousands of container objects, nearly all freed by reference counting when it ends, so the
# default collected young objects several times per request for almost nothing.
YOUNG_GC_THRESHOLD = 7_000


def tune_collector() -> None:
    """After start-up: move what it built (modules, the app, pools) out of the cyclic collector's reach with
    `gc.freeze()`, as Python's gc docs advise for servers, so full collections stop walking it while every
    request waits; and collect the young generation less often (measured: docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """`span_exporter` turns tracing on (tests pass an in-memory one); else OTEL_EXPORTER_OTLP_ENDPOINT does."""
    settings = settings or Settings()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, gpu_monthly_usd=settings.gpu_monthly_usd)
    failures = FailureLog(metrics)
    tracing = setup_tracing(exporter=span_exporter or exporter_from_env())
    redis = RedisState.from_url(
        settings.redis_url,
        timeout_s=settings.redis_timeout_s,
        retry_after_s=settings.redis_retry_s,
        on_error=lambda op: metrics.redis_errors.labels(op).inc(),
    )

    # access: who is calling, what they may spend
    pepper = pepper_of(settings)
    key_store: KeyStore = RedisKeyStore(redis, pepper) if redis.configured else MemoryKeyStore(pepper)
    key_lookup = CachedKeyLookup(key_store, pepper, fresh_s=settings.key_cache_s, stale_s=settings.key_stale_s)
    jwt_config = jwt_from_settings(settings)
    jwks = JwksCache(jwt_config.jwks_url) if jwt_config is not None and jwt_config.jwks_url else None
    admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
    authenticator = Authenticator(
        keys=key_lookup,
        jwt=JwtVerifier(jwt_config, jwks) if jwt_config else None,
        admin_key=admin_key or None,
        open_locally=settings.auth == "none",
        default_rpm=settings.jwt_default_rpm,
        default_tpm=settings.jwt_default_tpm,
        tracer=tracing.tracer,
    )
    limiter = KeyRateLimiter(
        redis,
        on_limited=lambda kind: metrics.rate_limited.labels(kind).inc(),
        on_drop=metrics.dropped_writes.labels("limits").inc,
    )
    cache = ResponseCache(redis, ttl_s=settings.cache_ttl_s, max_entry_bytes=settings.cache_max_entry_bytes)
    usage_store = UsageStore(redis, on_drop=metrics.dropped_writes.labels("usage").inc)
    prices = PriceTable(
        default=settings.price_default, models=dict(settings.prices), gpu_monthly_usd=settings.gpu_monthly_usd
    )

    # replicas, with their adapters
    adapter_registry = AdapterRegistry.for_redis(redis)
    # Requests on each adapter version across every gateway process: a version is unloaded once drained.
    leases = AdapterLeases(redis, lease_s=settings.total_timeout_s + 60)
    pool = build_pool(
        settings,
        metrics,
        failures=failures,
        registry=adapter_registry,
        leases=leases,
        tracer=tracing.tracer if tracing.enabled else None,
    )
    caller = ReplicaCaller(pool=pool, settings=settings, tracer=tracing.tracer)

    # model routes
    route_store = RouteStore(redis)
    route_table = RouteTable(route_store, failures=failures, on_reload=metrics.show_route_weights)
    route_stats = RouteStats(redis, metrics)
    guardian = Guardian(
        table=route_table,
        store=route_store,
        stats=route_stats,
        failures=failures,
        on_rollback=lambda route, reason: metrics.rollbacks.labels(route, reason).inc(),
    )

    # the inference log
    store = StoreRuntime(settings, metrics, failures)
    verdicts = Verdicts()
    writes = WriteBehind(redis, [limiter, usage_store, cache, route_stats])
    shadow = ShadowMirror(
        caller=caller, metrics=metrics, failures=failures, verdicts=verdicts, capacity=settings.shadow_queue
    )
    recent = RecentRequests()

    pipeline = InferencePipeline(
        authenticator=authenticator,
        targeting=Targeting(table=route_table, pool=pool),
        admission=Admission(
            limiter=limiter,
            cache=cache,
            metrics=metrics,
            cache_enabled=settings.cache_enabled,
            default_max_tokens=settings.default_max_tokens_estimate,
            tracer=tracing.tracer,
        ),
        caller=caller,
        charges=Charges(
            limiter=limiter, usage=usage_store, cache=cache, prices=prices, metrics=metrics, versions=pool.version
        ),
        route_stats=route_stats,
        capture=Capture(
            store.writer, failures=failures, percent=settings.capture_percent, key_percent=settings.capture_keys
        ),
        writes=writes,
        shadow=shadow,
        verdicts=verdicts,
        metrics=metrics,
        failures=failures,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        await store.start()
        await route_table.start()
        guardian.start()
        shadow.start()
        for model in pool.models():  # cache and cost series exist before the first request
            metrics.register_model(model)
        tune_collector()
        try:
            yield
        finally:
            await shadow.aclose()
            await guardian.aclose()
            await route_table.aclose()
            await pool.aclose()
            await writes.flush()
            await redis.close()
            if jwks is not None:
                await jwks.aclose()
            await store.aclose()
            tracing.shutdown()

    app = FastAPI(title="slm-stack gateway", version="0.1.0", lifespan=lifespan)
    state = app.state
    state.settings, state.metrics, state.tracing, state.redis = settings, metrics, tracing, redis
    state.authenticator, state.keys, state.key_lookup = authenticator, key_store, key_lookup
    state.usage, state.prices = usage_store, prices
    state.tokens = TokenIssuer(
        config=jwt_config, authenticator=authenticator, limiter=AnonymousLimiter(settings.anonymous_rpm, redis)
    )
    state.pool, state.adapters = pool, adapter_registry
    state.route_store, state.route_table, state.route_stats = route_store, route_table, route_stats
    state.store, state.pipeline = store, pipeline
    state.feedback = FeedbackDesk(
        recent=recent,
        engine=store.engine,
        pool=pool,
        route_stats=route_stats,
        writes=writes,
        metrics=metrics,
        failures=failures,
    )

    for router in (
        inference.router,
        models.router,
        feedback.router,
        usage.router,
        token.router,
        ops.router,
        keys.router,
        routes.router,
        adapters.router,
        inferences.router,
    ):
        app.include_router(router)
    install_error_handlers(app)
    # Middleware, innermost first (each add_middleware wraps what was added before).
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # The two HTTP series the dashboards and README use, named and labelled as the instrumentator's default
    # set has them; its other three (sizes, a 70-bucket latency) cost every request and nothing reads them.
    Instrumentator(registry=registry, excluded_handlers=UNMEASURED_HANDLERS).add(
        http_metrics.requests(registry=registry)
    ).add(
        http_metrics.latency(registry=registry, should_include_status=False, buckets=Histogram.DEFAULT_BUCKETS)
    ).instrument(app).expose(app, endpoint="/metrics", include_in_schema=False)
    app.add_middleware(AccessLogMiddleware, access_log=AccessLog(recent=recent))
    app.add_middleware(RequestIdMiddleware)
    tracing.instrument_app(app)
    return app
