"""Wiring only: build the app, its long-lived objects (on `app.state`), the front layer and error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.access_log import AccessLog, RecentRequests
from gateway.after_answer import AfterAnswer
from gateway.backends.pool import BackendPool
from gateway.errors import ClientError, GatewayError, InvalidRequest, PayloadTooLarge, error_response
from gateway.front import FrontDoor
from gateway.http_metrics import HttpMetrics
from gateway.metrics import GatewayMetrics
from gateway.policy import Policy
from gateway.routers import admin, auth_token, feedback, health, inference, models, usage
from gateway.serving import InferenceService
from gateway.settings import Settings
from gateway.tracing import exporter_from_env, route_span_details, setup_tracing


class GatewayApp(FastAPI):
    """FastAPI whose HTTP requests all enter through one front layer (gateway/front.py), which serves the
    inference routes itself and hands every other request to FastAPI's own stack."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.front is not None:
            scope["app"] = self
            await self.front(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def through_fastapi(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)


def install_error_handlers(app: FastAPI, max_body_bytes: int) -> None:
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
        if exc.status_code == 413:  # the front layer's body cap on the routes it passes on
            return error_response(PayloadTooLarge(f"request body exceeds {max_body_bytes} bytes"))
        err = ClientError(str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        err.status = exc.status_code
        return error_response(err)


def create_app(settings: Settings | None = None, *, span_exporter: SpanExporter | None = None) -> GatewayApp:
    """`span_exporter` turns tracing on (tests pass an in-memory one); else OTEL_EXPORTER_OTLP_ENDPOINT does."""
    settings = settings or Settings()
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = BackendPool(settings, metrics)
        tracing.instrument_pool(pool)
        app.state.pool = pool
        app.state.service = InferenceService(pool=pool, metrics=metrics, settings=settings, tracer=tracing.tracer,
                                             after=after)
        await pool.start()
        app.state.policy.start()
        for model in pool.models():  # cache and cost series exist before the first request
            app.state.policy.metrics.register_model(model)
        try:
            yield
        finally:
            after.run_all()  # the last answers' bookkeeping, before the accounting is flushed below
            await pool.aclose()
            await app.state.policy.aclose()
            tracing.shutdown()

    app = GatewayApp(title="slm-stack gateway", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.policy = Policy.build(settings, registry)
    app.state.authenticator = app.state.policy.authenticator
    tracing = app.state.tracing = setup_tracing(exporter=span_exporter or exporter_from_env())
    app.state.recent_requests = RecentRequests()
    after = app.state.after_answer = AfterAnswer()
    app.include_router(inference.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(feedback.router)
    app.include_router(usage.router)
    app.include_router(auth_token.router)
    app.include_router(admin.router)
    install_error_handlers(app, settings.max_body_bytes)
    Instrumentator(registry=registry).expose(app, endpoint="/metrics", include_in_schema=False)
    front = FrontDoor(inner=app.through_fastapi, routes=inference.HANDLERS,
                      max_body_bytes=settings.max_body_bytes, http_metrics=HttpMetrics(registry),
                      access_log=AccessLog(recent=app.state.recent_requests), after=after)
    app.front = tracing.wrap(front, route_span_details)
    return app
