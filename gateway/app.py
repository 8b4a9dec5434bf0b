"""The app: the services (gateway/wiring.py) on `app.state`, started and stopped by the lifespan, then the
routers, error handlers and middleware."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import Histogram
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics

from gateway import console
from gateway.api import ops, token
from gateway.api.admin import adapters, inferences, keys, review, routes
from gateway.api.contract import install_schema, operation_id, output_cap
from gateway.api.drain import Drain
from gateway.api.errors import install_error_handlers
from gateway.api.middleware.body_limit import BodyLimitMiddleware
from gateway.api.middleware.request_id import RequestIdMiddleware
from gateway.api.middleware.request_log import AccessLogMiddleware
from gateway.api.v1 import feedback, inference, models, usage
from gateway.observability.access_log import AccessLog
from gateway.settings import Settings
from gateway.wiring import Services

# Probes and scrapes would dominate the request rate and say nothing about the API.
UNMEASURED_HANDLERS = ["/metrics", "/healthz", "/readyz"]
# Young-generation threshold: one collection per 7,000 net allocations instead of CPython's 700. A request
# allocates thousands of container objects, nearly all freed by reference counting when it ends, so the
# default collected young objects several times per request for almost nothing.
YOUNG_GC_THRESHOLD = 7_000


def tune_collector() -> None:
    """After start-up: move what it built (modules, the app, pools) out of the cyclic collector's reach with
    `gc.freeze()`, as Python's gc docs advise for servers, so full collections stop walking it while every
    request waits; and collect the young generation less often (measured: bench/README.md)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, middle, old)


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """`span_exporter` turns tracing on (tests pass an in-memory one); else OTEL_EXPORTER_OTLP_ENDPOINT does."""
    services = Services(settings or Settings(), span_exporter=span_exporter)
    drain = Drain(services.settings.drain_delay_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await services.start()
        tune_collector()
        drain.install()
        try:
            yield
        finally:
            await services.stop()

    public = services.settings.api_docs == "public"  # else the schema is the admins' (or nobody's), no /docs
    app = FastAPI(
        title="slm-stack gateway",
        version="0.1.0",
        lifespan=lifespan,
        openapi_url="/openapi.json" if public else None,
        docs_url="/docs" if public else None,
        redoc_url=None,
        generate_unique_id_function=operation_id,
    )
    # What the routers reach through gateway/api/deps.py's accessors.
    state, s = app.state, services
    state.settings, state.metrics, state.tracing, state.redis = s.settings, s.metrics, s.tracing, s.redis
    state.authenticator, state.keys, state.key_lookup, state.tokens = s.authenticator, s.keys, s.key_lookup, s.tokens
    state.usage, state.prices, state.pool, state.adapters = s.usage, s.prices, s.pool, s.adapters
    state.route_store, state.route_table, state.route_stats = s.route_store, s.route_table, s.route_stats
    state.store, state.pipeline, state.feedback, state.review = s.store, s.pipeline, s.feedback, s.review
    state.sessions, state.limiter, state.drain = s.sessions, s.limiter, drain

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
        review.router,
    ):
        app.include_router(router)
    if services.settings.console:
        console.install(app)
    if services.settings.api_docs == "admin":
        app.include_router(ops.schema_router)
    install_schema(app, adjust=output_cap(services.settings.max_output_tokens))
    install_error_handlers(app)
    _install_middleware(app, services)
    return app


def _install_middleware(app: FastAPI, services: Services) -> None:
    """Middleware, innermost first (each add_middleware wraps what was added before)."""
    registry = services.registry
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=services.settings.max_body_bytes)
    # The two HTTP series the dashboards use, named and labelled as the instrumentator's default set has
    # them; its other three (sizes, a 70-bucket latency) cost every request and nothing reads them.
    Instrumentator(registry=registry, excluded_handlers=UNMEASURED_HANDLERS).add(
        http_metrics.requests(registry=registry)
    ).add(
        http_metrics.latency(registry=registry, should_include_status=False, buckets=Histogram.DEFAULT_BUCKETS)
    ).instrument(app).expose(app, endpoint="/metrics", include_in_schema=False)
    app.add_middleware(AccessLogMiddleware, access_log=AccessLog(recent=services.recent))
    app.add_middleware(RequestIdMiddleware)
    services.tracing.instrument_app(app)
