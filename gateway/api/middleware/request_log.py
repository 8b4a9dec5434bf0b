"""One JSON access-log line per request, written once its response ended (a stream's last byte
included) or the client left (status 499, as nginx logs it)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.observability.access_log import AccessLog, AccessRecord, bind_record, unbind_record
from gateway.observability.tracing import current_trace_id


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: AccessLog) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = AccessRecord()
        token = bind_record(record)
        started = time.perf_counter()
        trace_id = current_trace_id()
        status, done, x_cache = 500, False, None

        async def watched_send(message: Message) -> None:
            nonlocal status, done, x_cache
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"x-cache":
                        x_cache = value.decode("latin-1")
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                done = True

        try:
            await self.app(scope, receive, watched_send)
        finally:
            unbind_record(token)
            logged = status if done or status >= 500 else 499  # the answer never finished going out
            self.access_log.write(
                scope,
                record,
                request_id=scope.get("state", {}).get("request_id"),
                trace_id=trace_id,
                status=logged,
                latency_s=time.perf_counter() - started,
                x_cache=x_cache,
            )
