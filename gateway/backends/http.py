"""The HTTP transport every backend uses: a pooled HTTP/1.1 client per replica (gateway/backends/http11.py).

Why not httpx (or the official `ollama` client, which is httpx inside) or aiohttp: on this project's
reference machine one proxied call cost ~900 us of client CPU through an httpx AsyncClient, ~240 us
through aiohttp and less still through the lean client (`python -m bench.transport_cost` measures
all of them). The gateway's budget for everything it adds is 1 ms, so the transport decides
whether that is reachable.

This module is the one place where transport failures become gateway errors, and where the
client span of the call is made when tracing is on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
from opentelemetry.trace import Span, Tracer

from gateway.backends.base import error_for_status
from gateway.backends.http11 import BadResponse, Http11Client, Response
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.tracing import NO_CLIENT_SPAN, client_span


def error_message(body: bytes) -> str:
    """Ollama says {"error": "..."}; OpenAI-compatible servers {"error": {"message": ...}}."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode(errors="replace").strip()
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


def json_object(raw: bytes, backend: str, what: str) -> dict:
    """`raw` as a JSON object, or BackendUnavailable naming the backend and `what` it sent."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BackendUnavailable(f"backend {backend} sent a malformed {what}") from None
    if not isinstance(data, dict):
        raise BackendUnavailable(f"backend {backend} sent a {what} that is not a JSON object")
    return data


def stream_event(raw: bytes, backend: str, kind: str) -> dict:
    """One streamed JSON object (an NDJSON line, an SSE data field); a malformed one, or the error
    object a server sends mid-stream under status 200, raises BackendUnavailable."""
    event = json_object(raw, backend, kind)
    if "error" in event:
        raise BackendUnavailable(f"backend {backend}: {error_message(raw)}")
    return event


class BackendHTTP:
    def __init__(self, base_url: str, *, name: str, connect_timeout_s: float, max_connections: int,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self._client = Http11Client(self.base_url, connect_timeout_s=connect_timeout_s,
                                    max_connections=max_connections,
                                    headers={"content-type": "application/json", **(headers or {})})
        self.tracer: Tracer | None = None  # set when tracing is on: a client span per call

    async def aclose(self) -> None:
        await self._client.aclose()

    def translate(self, exc: BaseException) -> GatewayError:
        if isinstance(exc, TimeoutError):
            return BackendTimeout(f"backend {self.name} timed out")
        if isinstance(exc, BadResponse):
            return BackendUnavailable(f"backend {self.name} answered malformed HTTP")
        return BackendUnavailable(f"backend {self.name} unreachable: {type(exc).__name__}")

    async def _open(self, method: str, path: str, body: bytes | None, trace_headers: dict[str, str],
                    span: Span) -> Response:
        """The answer's head; a 4xx/5xx is read, released and raised as the matching GatewayError."""
        resp = await self._client.open(method, path, body, trace_headers)
        span.set_attribute("http.response.status_code", resp.status)
        if resp.status >= 400:  # 4xx too: OpenTelemetry marks a client span's 4xx an error
            try:
                message = error_message(await resp.read())
            finally:
                self._client.release(resp)
            raise error_for_status(resp.status, message, self.name)
        return resp

    async def json(self, method: str, path: str, body: bytes | None = None) -> dict:
        """One request, the whole JSON answer."""
        try:
            if self.tracer is None:
                status, raw = await self._client.fetch(method, path, body)
                if status >= 400:
                    raise error_for_status(status, error_message(raw), self.name)
            else:
                with client_span(self.tracer, method, self.base_url + path) as (span, trace_headers):
                    resp = await self._open(method, path, body, trace_headers, span)
                    try:
                        raw = await resp.read()
                    finally:
                        self._client.release(resp)
        except (OSError, asyncio.TimeoutError) as exc:  # ConnectionError and its kin are OSErrors
            raise self.translate(exc) from None  # outside the span: it records the raw error
        return json_object(raw, self.name, "JSON answer")

    async def line_batches(self, path: str, body: bytes, deadline: float | None = None) -> AsyncIterator[list[bytes]]:
        """POST, then the answer's lines (NDJSON or SSE) without line ends or blank lines, in batches:
        the complete lines of each read from the socket, except that the body's first line comes
        alone, so the first token is relayed before the rest of its read is parsed (a read can hold
        a whole short answer). A body cut short raises BackendUnavailable; one still going at loop
        time `deadline` raises BackendTimeout."""
        traced = client_span(self.tracer, "POST", self.base_url + path) if self.tracer else NO_CLIENT_SPAN
        try:
            with traced as (span, trace_headers):
                resp = await self._open("POST", path, body, trace_headers, span)
                try:
                    if deadline is not None:
                        resp.expire_at(deadline)
                    rest = b""
                    first = True
                    while (piece := await resp.next_piece()) is not None:
                        *complete, rest = (rest + piece if rest else piece).split(b"\n")
                        batch = [stripped for line in complete if (stripped := line.rstrip(b"\r"))]
                        if not batch:
                            continue
                        if first and len(batch) > 1:
                            yield batch[:1]
                            batch = batch[1:]
                        first = False
                        yield batch
                    rest = rest.rstrip(b"\r")
                    if rest:
                        yield [rest]
                finally:
                    self._client.release(resp)
        except (OSError, asyncio.TimeoutError) as exc:
            raise self.translate(exc) from None
