"""Wiring only: build the app, its long-lived objects (on `app.state`), middleware and error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator import metrics as http_metrics
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.access_log import AccessLogMiddleware, RecentRequests
from gateway.backends.pool import BackendPool
from gateway.errors import ClientError, GatewayError, InvalidRequest, error_body
from gateway.metrics import GatewayMetrics
from gateway.middleware.body_limit import BodyLimitMiddleware
from gateway.middleware.request_id import RequestIdMiddleware
from gateway.policy import Policy
from gateway.routers import admin, auth_token, feedback, health, inference, models, usage
from gateway.serving import InferenceService
from gateway.settings import Settings
from gateway.tracing import exporter_from_env, setup_tracing

log = logging.getLogger("gateway")


def _error_response(exc: GatewayError) -> Response:
    return Response(error_body(exc), status_code=exc.status, media_type="application/json", headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape; nothing the client did produces a 500 or a traceback."""

    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> Response:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = ".".join(str(p) for p in first["loc"] if p != "body") or None
        return _error_response(InvalidRequest(f"{field or 'request'}: {first['msg']}", param=field))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        err = ClientError(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        err.status = exc.status_code
        return _error_response(err)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return _error_response(GatewayError("internal error; see the gateway log for the request id"))


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """`span_exporter` turns tracing on (tests pass an in-memory one); else OTEL_EXPORTER_OTLP_ENDPOINT does."""
    settings = settings or Settings()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = BackendPool(settings, metrics)
        tracing.instrument_pool(pool)
        app.state.pool = pool
        app.state.service = InferenceService(pool=pool, metrics=metrics, settings=settings, tracer=tracing.tracer)
        await pool.start()
        for model in pool.models():  # cache and cost series exist before the first request
            app.state.policy.metrics.register_model(model)
        try:
            yield
        finally:
            await pool.aclose()
            await app.state.policy.aclose()
            tracing.shutdown()

    app = FastAPI(title="slm-stack gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.policy = Policy.build(settings, registry)
    app.state.authenticator = app.state.policy.authenticator
    tracing = app.state.tracing = setup_tracing(app, exporter=span_exporter or exporter_from_env())
    app.state.recent_requests = RecentRequests()
    app.include_router(inference.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(feedback.router)
    app.include_router(usage.router)
    app.include_router(auth_token.router)
    app.include_router(admin.router)
    install_error_handlers(app)
    # Only the two HTTP metrics the dashboards and alerts use: the default set also observes request
    # and response sizes and a second latency histogram on every request, for nothing.
    instrumentator = Instrumentator(registry=registry, excluded_handlers=["/metrics", "/healthz", "/readyz"])
    instrumentator.add(http_metrics.requests(registry=registry), http_metrics.latency(registry=registry))
    instrumentator.instrument(app).expose(app, endpoint="/metrics", include_in_schema=False)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware, recent=app.state.recent_requests)  # inside RequestId: sees the id
    app.add_middleware(RequestIdMiddleware)
    return app
