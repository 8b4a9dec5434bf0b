"""Structured JSON logs: one line per request, and the JSON formatter for every other log line.

A request's line carries what an operator joins on and filters by: request id (also the
`X-Request-ID` header, so feedback joins up), trace id, key id, model, backend, status, tokens,
latency and cache result. Prompts and completions are never logged.

The request path fills in what only it knows through `current_record()` (a context variable, so
the serving code needs no request object); gateway/middleware/access_log.py writes the line when
the last byte of the response (a stream's too) has gone out, or the request failed.
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from starlette.types import Scope

ACCESS_LOGGER = "gateway.access"
# Probes and scrapes arrive every few seconds from every replica; their successes are noise.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@dataclass
class AccessRecord:
    """What the request path learned about a request, for its log line."""

    key_id: str | None = None
    model: str | None = None  # the model that answered (a route's variant)
    route: str | None = None
    route_version: int | None = None
    backend: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache: str | None = None


_CURRENT: ContextVar[AccessRecord | None] = ContextVar("gateway_access_record", default=None)


def current_record() -> AccessRecord:
    """This request's record; a throwaway one outside a request or without the middleware (unit tests)."""
    return _CURRENT.get() or AccessRecord()


class RecentRequests:
    """Request id -> the record of the last `capacity` LLM requests this replica served (bounded, for
    feedback: the model that answered, and its route)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, AccessRecord] = OrderedDict()

    def remember(self, request_id: str, record: AccessRecord) -> None:
        self._records[request_id] = record
        self._records.move_to_end(request_id)
        if len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def record_of(self, request_id: str) -> AccessRecord | None:
        return self._records.get(request_id)


def bind_record(record: AccessRecord) -> Token[AccessRecord | None]:
    """Make `record` this request's (the access-log middleware does it when a request arrives)."""
    return _CURRENT.set(record)


def unbind_record(token: Token[AccessRecord | None]) -> None:
    _CURRENT.reset(token)


class AccessLog:
    """Writes a request's line once its response ended; remembers LLM requests' models for feedback."""

    def __init__(self, *, recent: RecentRequests | None = None, logger: logging.Logger | None = None) -> None:
        self.recent = recent
        self.logger = logger or logging.getLogger(ACCESS_LOGGER)

    def write(self, scope: Scope, record: AccessRecord, *, request_id: str | None, trace_id: str | None,
              status: int, latency_s: float, x_cache: str | None) -> None:
        if self.recent is not None and request_id and record.model:
            self.recent.remember(request_id, record)
        if scope["path"] in QUIET_PATHS and status < 400:
            return
        if not self.logger.isEnabledFor(logging.INFO):
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
