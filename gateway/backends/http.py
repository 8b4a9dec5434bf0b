"""The HTTP client every backend call goes through: one pooled aiohttp session per backend replica.

Why aiohttp: it is already a dependency (the JWKS fetch uses it too), it hands a response body over
piece by piece as it arrives (an NDJSON or SSE stream is relayed without buffering), keeps a
keep-alive pool with a connection limit per host, speaks https with the platform's or a given CA
bundle, and goes through HTTP(S)_PROXY / NO_PROXY (gateway/outbound.py sets it up).

What this module adds:
- The session is made lazily inside the running loop (never at import) and closed by `aclose`.
- A POST that fails because a kept-alive connection was closed by the server (its idle timeout
  racing our request) before any byte of the answer came back is sent once more. aiohttp does
  that itself only for idempotent methods; every inference call is a POST, and a request the
  server never answered is safe to repeat (failover would send it to another replica anyway).
  Never after the answer's head arrived, and never on a fresh connection: that server is failing.
- Transport failures become the gateway's errors (BackendTimeout, BackendUnavailable, and
  `error_for_status` for 4xx/5xx answers), and each call gets a client span when tracing is on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import AbstractContextManager
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.client import IDEMPOTENT_METHODS
from opentelemetry.trace import Span, Tracer

from gateway.backends.base import error_for_status
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.observability.tracing import NO_CLIENT_SPAN, client_span
from gateway.outbound import new_session


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


def json_object(raw: bytes, backend: str, what: str) -> dict[str, Any]:
    """`raw` as a JSON object, or BackendUnavailable naming the backend and `what` it sent."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BackendUnavailable(f"backend {backend} sent a malformed {what}") from None
    if not isinstance(data, dict):
        raise BackendUnavailable(f"backend {backend} sent a {what} that is not a JSON object")
    return data


def stream_event(raw: bytes, backend: str, kind: str) -> dict[str, Any]:
    """One streamed JSON object (an NDJSON line, an SSE data field); a malformed one, or the error
    object a server sends mid-stream under status 200, raises BackendUnavailable."""
    event = json_object(raw, backend, kind)
    if "error" in event:
        raise BackendUnavailable(f"backend {backend}: {error_message(raw)}")
    return event


async def _mark_reused(_session: aiohttp.ClientSession, context: SimpleNamespace, _params: object) -> None:
    context.trace_request_ctx.reused = True


def _reuse_tracking() -> aiohttp.TraceConfig:
    """Tells a request (through its `trace_request_ctx`) that it went out on a kept-alive connection."""
    config = aiohttp.TraceConfig()
    config.on_connection_reuseconn.append(_mark_reused)
    return config


# What a failure to get an answer's head can be when the server closed a kept-alive connection:
# an end of stream, or a reset (aiohttp's ClientConnectionResetError is a ConnectionResetError).
_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError)
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


class BackendHTTP:
    """Calls to one backend replica at `base_url` (whose path prefixes every call's)."""

    def __init__(
        self,
        base_url: str,
        *,
        name: str,
        connect_timeout_s: float,
        max_connections: int,
        headers: dict[str, str] | None = None,
        ca_file: str | None = None,
        address: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port][/path], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.connect_timeout_s = connect_timeout_s
        self.max_connections = max_connections
        self.ca_file = ca_file
        self.address = address  # the one address of the URL's host to connect to (a replica found by DNS)
        self._headers = {"content-type": "application/json", **(headers or {})}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self.tracer: Tracer | None = None  # set when tracing is on: a client span per call

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise BackendUnavailable(f"backend {self.name}: client closed")
        if self._session is None:
            self._session = new_session(
                self.base_url,
                connect_timeout_s=self.connect_timeout_s,
                max_connections=self.max_connections,
                headers=self._headers,
                ca_file=self.ca_file,
                trace_configs=[_reuse_tracking()],
                address=self.address,
            )
        return self._session

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def translate(self, exc: BaseException) -> GatewayError:
        """A transport failure as the gateway error the serving layer and the pool act on."""
        if isinstance(exc, asyncio.TimeoutError):  # aiohttp's connect and total timeouts are TimeoutErrors
            return BackendTimeout(f"backend {self.name} timed out")
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason = getattr(exc.certificate_error, "verify_message", None) or exc.certificate_error
            return BackendUnavailable(f"backend {self.name}: TLS certificate not trusted ({reason})")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return BackendUnavailable(f"backend {self.name} unreachable: {type(exc.os_error).__name__}")
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
            return BackendUnavailable(f"backend {self.name} closed the connection before the answer was whole")
        if isinstance(exc, aiohttp.ClientResponseError):
            return BackendUnavailable(f"backend {self.name} answered malformed HTTP")
        return BackendUnavailable(f"backend {self.name} unreachable: {type(exc).__name__}")

    def _span(self, method: str, path: str) -> AbstractContextManager[tuple[Span, dict[str, str]]]:
        return client_span(self.tracer, method, self.base_url + path) if self.tracer else NO_CLIENT_SPAN

    async def _send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: aiohttp.ClientTimeout | None
    ) -> aiohttp.ClientResponse:
        """The answer's status and headers. A POST whose kept-alive connection the server had closed
        (it failed before any byte of the answer arrived) is sent once more, on another connection."""
        session = self._client()
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        retry = method not in IDEMPOTENT_METHODS  # aiohttp retries the idempotent ones itself
        while True:
            attempt = SimpleNamespace(reused=False)
            try:
                return await session.request(
                    method, self.base_url + path, data=body, headers=headers or None, trace_request_ctx=attempt, **extra
                )
            except _STALE as exc:
                if not (retry and attempt.reused) or isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                retry = False

    async def _open(
        self,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        span: Span,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> aiohttp.ClientResponse:
        """`_send`, with a 4xx/5xx answer read, released and raised as the matching GatewayError."""
        resp = await self._send(method, path, body, headers, timeout)
        span.set_attribute("http.response.status_code", resp.status)
        if resp.status >= 400:  # 4xx too: OpenTelemetry marks a client span's 4xx an error
            try:
                message = error_message(await resp.read())
            finally:
                resp.release()
            raise error_for_status(resp.status, message, self.name)
        return resp

    async def json(self, method: str, path: str, body: bytes | None = None) -> dict[str, Any]:
        """One request, the whole JSON answer."""
        return json_object(await self.read(method, path, body), self.name, "JSON answer")

    async def read(self, method: str, path: str, body: bytes | None = None) -> bytes:
        """One request, the whole answer's body as it came (a JSON list, or plain text: some admin
        endpoints answer that way, such as llama.cpp's /lora-adapters and vLLM's load_lora_adapter)."""
        try:
            with self._span(method, path) as (span, trace_headers):
                resp = await self._open(method, path, body, trace_headers, span)
                try:
                    raw = await resp.read()
                finally:
                    resp.release()
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from None  # outside the span: it records the raw error
        return raw

    def _until(self, deadline: float | None) -> aiohttp.ClientTimeout | None:
        """A deadline (loop time) as aiohttp's total timeout, which also bounds every read of the body."""
        if deadline is None:
            return None
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise BackendTimeout(f"backend {self.name}: no time left for the call")
        return aiohttp.ClientTimeout(total=left, sock_connect=self.connect_timeout_s)

    async def line_batches(
        self, path: str, body: bytes, deadline: float | None = None
    ) -> AsyncGenerator[list[bytes], None]:
        """POST, then the answer's lines (NDJSON or SSE) without line ends or blank lines, in batches:
        the complete lines of what arrived together, except that the body's first line comes alone,
        so the first token is relayed before the rest of its read is parsed. A body cut short raises
        BackendUnavailable; one still going at loop time `deadline` raises BackendTimeout. Leaving
        early (cancel, close) closes the connection; a body read to its end leaves it for reuse."""
        try:
            with self._span("POST", path) as (span, trace_headers):
                resp = await self._open("POST", path, body, trace_headers, span, self._until(deadline))
                try:
                    rest = b""
                    first = True
                    async for piece in resp.content.iter_any():  # whatever arrived since the last read
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
                    resp.release()  # back to the pool if the body was whole, else closed
        except _TRANSPORT_ERRORS as exc:
            raise self.translate(exc) from None
