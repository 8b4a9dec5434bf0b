"""The one ASGI layer in front of every HTTP request, and the direct path for the inference routes.

For every request it gives an id (a sane incoming `X-Request-ID`, else a fresh one, echoed on the
response), and once the last byte went out (a stream's too) or the client left (499) it queues the
HTTP metrics and the access-log line, with the answer's own bookkeeping, on the AfterAnswer queue
(gateway/after_answer.py): they run a moment later, off the path of the client's next request.

The inference routes, the gateway's reason to exist, are then served from here: read the body
under the cap, authenticate, call the same handler function FastAPI routes to, send the response.
Every other route goes on through FastAPI. Why: FastAPI's routing and dependency solving, the
middleware Starlette and FastAPI install, and one middleware per concern of ours (each wrapping
`send` again) cost more CPU per request, and again per streamed chunk, than the gateway's own
work on that request (before/after in bench/reports/2026-11-22/). FastAPI keeps the routes
registered, so the OpenAPI schema and the 405 for other methods are unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.access_log import AccessLog, AccessRecord, bind_record, unbind_record
from gateway.after_answer import AfterAnswer
from gateway.auth import Principal
from gateway.deps import authenticated
from gateway.errors import PayloadTooLarge, error_response
from gateway.http_metrics import HttpMetrics
from gateway.protocol import FinalPart
from gateway.tracing import current_trace_id

log = logging.getLogger("gateway.front")

Handler = Callable[[Request, Principal], Awaitable[Response]]


class _ClientGone(Exception):
    """The client disconnected before its request body arrived."""

# How long a stream runs before a task starts watching for the client hanging up (see `_stream`).
WATCH_AFTER_S = 0.05
_VALID_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The caller's `X-Request-ID` when it is short and plain (it ends up in logs), else a fresh one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _VALID_ID.match(value):
                return value
            break
    return os.urandom(16).hex().encode()  # what uuid4().hex carries, without building a UUID object


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int:
    for name, value in headers:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


class _Exchange:
    """What the front layer learns about one response while it goes out."""

    __slots__ = ("request_id", "status", "done", "x_cache")

    def __init__(self, request_id: bytes) -> None:
        self.request_id = request_id
        self.status = 500
        self.done = False
        self.x_cache: str | None = None

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        self.status = status
        for name, value in headers:
            if name == b"x-cache":
                self.x_cache = value.decode()
        return [*headers, (b"x-request-id", self.request_id)]

    @property
    def logged_status(self) -> int:
        # 499 (nginx's "client closed request") when the response never finished going out.
        return self.status if self.done or self.status >= 500 else 499


class FrontDoor:
    def __init__(self, *, inner: ASGIApp, routes: dict[str, Handler], max_body_bytes: int,
                 http_metrics: HttpMetrics, access_log: AccessLog, after: AfterAnswer) -> None:
        self.inner = inner  # FastAPI's own stack, for every other route
        self.routes = routes  # POST path -> handler
        self.max_body_bytes = max_body_bytes
        self.http_metrics = http_metrics
        self.access_log = access_log
        self.after = after  # the answer's bookkeeping and log line run a moment later (gateway/after_answer.py)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = request_id_of(scope["headers"])
        state = scope.setdefault("state", {})
        state["request_id"] = request_id.decode()
        record = AccessRecord()
        token = bind_record(record)
        started = time.perf_counter()
        trace_id = current_trace_id()
        exchange = _Exchange(request_id)
        handler = self.routes.get(scope["path"]) if scope["method"] == "POST" else None
        try:
            if handler is not None:
                await self._serve(handler, scope, receive, send, exchange)
            else:
                await self._pass_on(scope, receive, send, exchange)
        finally:
            unbind_record(token)
            latency_s = time.perf_counter() - started
            route = scope["path"] if handler is not None else getattr(scope.get("route"), "path", "none")

            def book() -> None:
                self.http_metrics.observe(handler=route, method=scope["method"], status=exchange.status,
                                          duration_s=latency_s)
                self.access_log.write(scope, record, request_id=state["request_id"], trace_id=trace_id,
                                      status=exchange.logged_status, latency_s=latency_s, x_cache=exchange.x_cache)

            self.after.defer(book)

    async def _pass_on(self, scope: Scope, receive: Receive, send: Send, exchange: _Exchange) -> None:
        # What these routes read (metrics, usage, feedback's request -> model map) must include every
        # answer already sent: the bookkeeping left for later is done first.
        self.after.run_all()
        cap = self.max_body_bytes
        if _declared_length(scope["headers"]) > cap:
            await self._send_whole(send, error_response(PayloadTooLarge(f"request body exceeds {cap} bytes")), exchange)
            return
        seen = 0

        async def capped_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > cap:  # an HTTPException, so FastAPI's handlers answer it (app.py renders 413)
                raise HTTPException(413, f"request body exceeds {cap} bytes")
            return message

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = exchange.start(message["status"], list(message.get("headers", ())))
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                exchange.done = True

        await self.inner(scope, capped_receive, watched_send)

    @staticmethod
    async def _send_whole(send: Send, response: Response, exchange: _Exchange) -> None:
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": exchange.start(response.status_code, response.raw_headers)})
        await send({"type": "http.response.body", "body": response.body, "more_body": False})
        exchange.done = True

    # -- the inference routes ----------------------------------------------------------------------

    async def _serve(self, handler: Handler, scope: Scope, receive: Receive, send: Send, exchange: _Exchange) -> None:
        try:
            request = Request(scope, receive)
            request._body = await self._read_body(scope, receive)  # Starlette's own cache: body() returns it
            response = await handler(request, await authenticated(request))
        except _ClientGone:
            exchange.status = 499
            return
        except Exception as exc:  # noqa: BLE001 - every error leaves in OpenAI's shape
            response = error_response(exc)
        if isinstance(response, StreamingResponse):
            await self._stream(response, receive, send, exchange)
        else:
            await self._send_whole(send, response, exchange)
        if response.background is not None:  # bookkeeping the handler left for after the answer (a plain callable)
            self.after.defer(response.background)  # type: ignore[arg-type]

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, refused with 413 by Content-Length or as soon as a chunked body passes the cap."""
        cap = self.max_body_bytes
        if _declared_length(scope["headers"]) > cap:
            raise PayloadTooLarge(f"request body exceeds {cap} bytes")
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientGone
            part = message.get("body", b"")
            size += len(part)
            if size > cap:
                raise PayloadTooLarge(f"request body exceeds {cap} bytes")
            parts.append(part)
            if not message.get("more_body", False):
                return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _stream(self, response: StreamingResponse, receive: Receive, send: Send, exchange: _Exchange) -> None:
        """Send a streamed answer; a client that hangs up cancels it, wherever it waits.

        The server's `send` goes quiet once the client is gone, so a watcher on `receive` (the body
        is read, so the next message is the disconnect) cancels this task: the relay then closes the
        upstream call. The watcher is a task started only if the stream is still going after
        WATCH_AFTER_S: most answers of a small model end sooner, and a hang-up is then noticed at
        most that late.
        """
        task = asyncio.current_task()
        assert task is not None
        finished = gone = False
        watcher: asyncio.Future[Message] | None = None

        def hang_up(done: asyncio.Future[Message]) -> None:
            nonlocal gone
            if finished or done.cancelled() or done.exception() is not None:
                return
            if done.result()["type"] == "http.disconnect":
                gone = True
                task.cancel()

        def watch() -> None:
            nonlocal watcher
            if not finished:
                watcher = asyncio.ensure_future(receive())
                watcher.add_done_callback(hang_up)

        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": exchange.start(response.status_code, response.raw_headers)})
        timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
        body = response.body_iterator
        try:
            async for chunk in body:
                if finished:  # the body went on after its FinalPart: nothing more can be sent
                    log.error("streamed body yielded after its final part; dropped")
                    continue
                finished = type(chunk) is FinalPart
                await send({"type": "http.response.body", "body": chunk, "more_body": not finished})
                exchange.done = finished
            if not finished:
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                exchange.done = True
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # our own cancel: the client left, which is not an error
        finally:
            finished = True
            timer.cancel()
            if watcher is not None:
                watcher.cancel()
            if not exchange.done and hasattr(body, "aclose"):  # stopped mid-way: let the relay close upstream
                await body.aclose()
