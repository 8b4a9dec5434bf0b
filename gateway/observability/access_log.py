"""The access log: one JSON line per request.

A request's line carries what an operator joins on and filters by: request id (also the
`X-Request-ID` header, so feedback joins up), trace id, key id, model, backend, status, tokens,
latency and cache result. Prompts and completions are never logged.

The request path fills in what only it knows through `current_record()` (a context variable, so
the serving code needs no request object); gateway/api/middleware/request_log.py writes the line when
the last byte of the response (a stream's too) has gone out, or the request failed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextvars import ContextVar, Token
from dataclasses import dataclass

from starlette.types import Scope

from gateway.protocol.answer import NO_BACKEND, Answer

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
    # Not logged: who sent the request (a key id, or a token's subject) and the user its rating counts as.
    owner: str | None = None
    rater: str | None = None

    def settled(self, answer: Answer, route: str | None, route_version: int | None) -> None:
        """What the request's answer adds to its line (a cache hit names no backend)."""
        self.model, self.route, self.route_version = answer.model, route, route_version
        if answer.outcome == "cache_hit":
            return
        self.backend = None if answer.backend == NO_BACKEND else answer.backend
        if answer.usage:
            self.prompt_tokens = answer.usage.get("prompt_tokens")
            self.completion_tokens = answer.usage.get("completion_tokens")


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

    def write(
        self,
        scope: Scope,
        record: AccessRecord,
        *,
        request_id: str | None,
        trace_id: str | None,
        status: int,
        latency_s: float,
        x_cache: str | None,
    ) -> None:
        if self.recent is not None and request_id and record.model:
            self.recent.remember(request_id, record)
        if scope["path"] in QUIET_PATHS and status < 400:
            return
        if not self.logger.isEnabledFor(logging.INFO):
            return
        fields = dict(vars(record))  # flat fields: no deep copy (asdict) on every request
        del fields["owner"], fields["rater"]
        fields["cache"] = record.cache or (x_cache.lower() if x_cache else None)
        self.logger.info(
            {
                "event": "request",
                "request_id": request_id,
                "trace_id": trace_id,
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "latency_ms": round(latency_s * 1000, 2),
                **fields,
            }
        )
