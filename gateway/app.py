"""Wiring only: build the app, its long-lived objects (on `app.state`), middleware and error handlers."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry, Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.access_log import AccessLog, RecentRequests
from gateway.adapters.in_flight import SharedInFlight
from gateway.adapters.registry import AdapterRegistry
from gateway.backends.adapter_backend import AdapterBackend
from gateway.backends.pool import BackendPool
from gateway.errors import ClientError, GatewayError, InvalidRequest, PayloadTooLarge, error_response
from gateway.metrics import GatewayMetrics
from gateway.middleware.access_log import AccessLogMiddleware
from gateway.middleware.body_limit import BodyLimitMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.policy import Policy
from gateway.routers import (adapters, admin, auth_token, feedback, health, inference, inferences, models, routes,
                             usage)
from gateway.routes.guard import Guardian
from gateway.routes.shadow import ShadowMirror
from gateway.routes.table import RouteTable
from gateway.routes.targeting import Targeting
from gateway.serving import InferenceService
from gateway.settings import Settings
from gateway.store.runtime import StoreRuntime
from gateway.tracing import exporter_from_env, setup_tracing

# Probes and scrapes would dominate the request rate and say nothing about the API.
UNMEASURED_HANDLERS = ["/metrics", "/healthz", "/readyz"]


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape; nothing the client did produces a 500 or a traceback."""

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(Exception)  # our bug: logged with its traceback, answered as a bare 500
    async def unexpected(_: Request, exc: Exception) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return error_response(InvalidRequest(f"{field or 'request'}: {first['msg']}", param=field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 413:  # the body cap (gateway/middleware/body_limit.py)
            return error_response(PayloadTooLarge(str(exc.detail)))
        err = ClientError(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        err.status = exc.status_code
        return error_response(err)


# Young-generation threshold: one collection per 7,000 net allocations instead of CPython's 700. A request
# allocates thousands of container objects, nearly all freed by reference counting when it ends, so the
# default collected young objects several times per request for almost nothing.
YOUNG_GC_THRESHOLD = 7_000


def tune_collector() -> None:
    """After start-up: move what it built (modules, the app, pools) out of the cyclic collector's reach with
    `gc.freeze()`, as Python's gc docs advise for servers, so full collections stop walking it while every
    request waits; and collect the young generation less often (measured: bench/README.md, "Issue 16, end")."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """`span_exporter` turns tracing on (tests pass an in-memory one); else OTEL_EXPORTER_OTLP_ENDPOINT does."""
    settings = settings or Settings()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    policy = Policy.build(settings, registry, metrics)
    tracing = setup_tracing(exporter=span_exporter or exporter_from_env())
    store = StoreRuntime(settings, registry)  # the inference log and feedback (connects in the lifespan)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = BackendPool(settings, metrics)
        held: dict[str, set[str]] = {}  # what each adapter-serving replica holds, shared by their drivers
        # Requests on each adapter version across every gateway process: a version is unloaded once drained.
        in_flight = SharedInFlight(policy.redis, lease_s=settings.total_timeout_s + 60)
        for replica in pool.replicas:
            if isinstance(replica.backend, AdapterBackend):
                replica.backend.attach_adapters(app.state.adapters, held, in_flight)
        tracing.instrument_pool(pool)
        app.state.pool = pool
        app.state.service = InferenceService(pool=pool, accounting=policy.accounting, settings=settings,
                                             tracer=tracing.tracer)
        table = app.state.route_table = RouteTable(policy.routes, on_reload=metrics.show_route_weights)
        app.state.targeting = Targeting(table=table, pool=pool)
        guardian = Guardian(table=table, store=policy.routes, stats=policy.accounting.route_stats,
                            on_rollback=lambda route, reason: metrics.rollbacks.labels(route, reason).inc())
        shadow = app.state.shadow = ShadowMirror(pool=pool, metrics=metrics, timeout_s=settings.total_timeout_s,
                                                 capacity=settings.shadow_queue)
        await pool.start()
        await store.start()
        policy.accounting.on_settled = store.capture.on_settled
        policy.accounting.versions = pool.version
        await table.start()
        guardian.start()
        shadow.start()
        for model in pool.models():  # cache and cost series exist before the first request
            policy.metrics.register_model(model)
        tune_collector()
        try:
            yield
        finally:
            await shadow.aclose()
            await guardian.aclose()
            await table.aclose()
            await pool.aclose()
            await policy.aclose()
            await store.aclose()
            tracing.shutdown()

    app = FastAPI(title="slm-stack gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.policy = policy
    app.state.store = store
    app.state.authenticator = policy.authenticator
    app.state.tracing = tracing
    app.state.recent_requests = RecentRequests()
    # LoRA adapters (gateway/adapters/); a route variant's adapter is checked against its base (routers/routes.py).
    app.state.adapters = AdapterRegistry.for_redis(policy.redis)
    for router in (inference.router, models.router, health.router, feedback.router, usage.router,
                   auth_token.router, admin.router, routes.router, inferences.router, adapters.router):
        app.include_router(router)
    install_error_handlers(app)
    # Middleware, innermost first (each add_middleware wraps what was added before).
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # The two HTTP series the dashboards and README use, named and labelled as the instrumentator's default
    # set has them; its other three (sizes, a 70-bucket latency) cost every request and nothing reads them.
    Instrumentator(registry=registry, excluded_handlers=UNMEASURED_HANDLERS) \
        .add(http_metrics.requests(registry=registry)) \
        .add(http_metrics.latency(registry=registry, should_include_status=False, buckets=Histogram.DEFAULT_BUCKETS)) \
        .instrument(app).expose(app, endpoint="/metrics", include_in_schema=False)
    app.add_middleware(AccessLogMiddleware, access_log=AccessLog(recent=app.state.recent_requests))
    app.add_middleware(RequestIdMiddleware)
    tracing.instrument_app(app)
    return app
