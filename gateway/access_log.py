"""Structured JSON logs: one line per request, and the JSON formatter for every other log line.

A request's line carries what an operator joins on and filters by: request id (also the
`X-Request-ID` header, so feedback joins up), trace id, key id, model, backend, status, tokens,
latency and cache result. Prompts and completions are never logged.

The request path fills in what only it knows through `current_record()` (a context variable, so
the serving code needs no request object); the middleware writes the line when the last byte of
the response (a stream's too) has gone out, or the request failed.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.tracing import current_trace_id

ACCESS_LOGGER = "gateway.access"
# Probes and scrapes arrive every few seconds from every replica; their successes are noise.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass
class AccessRecord:
    """What the request path learned about a request, for its log line."""

    key_id: str | None = None
    model: str | None = None
    backend: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache: str | None = None


_CURRENT: ContextVar[AccessRecord | None] = ContextVar("gateway_access_record", default=None)


def current_record() -> AccessRecord:
    """This request's record; a throwaway one outside a request or without the middleware (unit tests)."""
    return _CURRENT.get() or AccessRecord()


class RecentRequests:
    """Request id -> model of the last `capacity` LLM requests this replica served (bounded, for feedback)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._models: OrderedDict[str, str] = OrderedDict()

    def remember(self, request_id: str, model: str) -> None:
        self._models[request_id] = model
        self._models.move_to_end(request_id)
        if len(self._models) > self.capacity:
            self._models.popitem(last=False)

    def model_of(self, request_id: str) -> str | None:
        return self._models.get(request_id)


class AccessLogMiddleware:
    """Pure ASGI (no buffering), so streamed responses are logged when they end, not when they start."""

    def __init__(self, app: ASGIApp, *, recent: RecentRequests | None = None, logger: logging.Logger | None = None) -> None:
        self.app = app
        self.recent = recent
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = AccessRecord()
        token = _CURRENT.set(record)
        state = scope.setdefault("state", {})
        started = time.perf_counter()
        trace_id = current_trace_id()
        response: dict[str, Any] = {"status": 500, "request_id": None, "x_cache": None, "done": False}

        async def send_and_watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                headers = dict(message.get("headers", []))
                response["request_id"] = headers.get(b"x-request-id", b"").decode() or None
                response["x_cache"] = headers.get(b"x-cache", b"").decode() or None
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response["done"] = True

        try:
            await self.app(scope, receive, send_and_watch)
        finally:
            _CURRENT.reset(token)
            # 499 (nginx's "client closed request") when the response never finished going out.
            status = response["status"] if response["done"] else 499 if response["status"] < 500 else response["status"]
            request_id = state.get("request_id") or response["request_id"]
            self._log(scope, record, request_id=request_id, trace_id=trace_id, status=status,
                      latency_s=time.perf_counter() - started, x_cache=response["x_cache"])

    def _log(self, scope: Scope, record: AccessRecord, *, request_id: str | None, trace_id: str | None,
             status: int, latency_s: float, x_cache: str | None) -> None:
        if self.recent is not None and request_id and record.model:
            self.recent.remember(request_id, record.model)
        if scope["path"] in QUIET_PATHS and status < 400:
            return
        fields = dict(vars(record))  # flat fields: asdict's recursive deep copy costs ~40 us here
        fields["cache"] = record.cache or (x_cache.lower() if x_cache else None)
        self.logger.info({
            "event": "request", "request_id": request_id, "trace_id": trace_id,
            "method": scope["method"], "path": scope["path"], "status": status,
            "latency_ms": round(latency_s * 1000, 2), **fields,
        })


class JsonFormatter(logging.Formatter):
    """One JSON object per line; dict messages are merged in, anything else becomes "message"."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if isinstance(record.msg, dict):
            payload.update(record.msg)
        else:
            payload["message"] = record.getMessage()
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def configure_json_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Route every logger (uvicorn's included, when it is started with log_config=None) through JSON."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log would be a second, unstructured line per request.
    logging.getLogger("uvicorn.access").disabled = True
