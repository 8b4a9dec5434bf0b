"""The HTTP transport every backend uses: one pooled aiohttp session per replica.

Why aiohttp and not httpx (or the official `ollama` client, which is httpx inside): on this
project's reference machine one proxied request cost ~900 us of CPU through an httpx
AsyncClient (1.1-1.3 ms through `ollama.AsyncClient`) against ~200 us through aiohttp's
C-accelerated client (`bench/transport_cost.py` measures it). The gateway's budget for
everything it adds is 1 ms, so the transport decides whether that is reachable.

This module is the one place where transport failures become gateway errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import orjson

from gateway.backends.base import error_for_status
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError


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


class BackendHTTP:
    def __init__(self, base_url: str, *, name: str, connect_timeout_s: float, max_connections: int,
                 headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name
        self._headers = {"content-type": "application/json", **(headers or {})}
        # sock_read=None: first-token and total deadlines belong to the serving layer.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=None)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.trace_configs: list[aiohttp.TraceConfig] = []  # client spans, added when tracing is on

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created lazily: a session needs the running event loop
            connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=self._max_connections,
                                             keepalive_timeout=30, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout,
                                                  trust_env=False, auto_decompress=False,
                                                  json_serialize=lambda o: orjson.dumps(o).decode(),
                                                  trace_configs=self.trace_configs or None)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    def translate(self, exc: BaseException) -> GatewayError:
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            return BackendTimeout(f"backend {self.name} timed out")
        return BackendUnavailable(f"backend {self.name} unreachable: {type(exc).__name__}")

    @asynccontextmanager
    async def _request(self, method: str, path: str, body: bytes | None) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            async with self._client().request(method, self.base_url + path, data=body) as resp:
                if resp.status >= 400:
                    raise error_for_status(resp.status, error_message(await resp.read()), self.name)
                yield resp
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            raise self.translate(exc) from None

    async def json(self, method: str, path: str, body: bytes | None = None) -> dict:
        """One request, the whole JSON answer."""
        async with self._request(method, path, body) as resp:
            raw = await resp.read()
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendUnavailable(f"backend {self.name} answered invalid JSON") from None
        if not isinstance(data, dict):
            raise BackendUnavailable(f"backend {self.name} answered a JSON {type(data).__name__}, not an object")
        return data

    async def lines(self, path: str, body: bytes) -> AsyncIterator[bytes]:
        """POST, then the answer line by line (NDJSON or SSE), without trailing newlines or blank lines.

        A body cut before its end raises BackendUnavailable (aiohttp sees the chunked body end early).
        """
        async with self._request("POST", path, body) as resp:
            try:
                async for raw in resp.content:
                    line = raw.rstrip(b"\r\n")
                    if line:
                        yield line
            except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
                raise self.translate(exc) from None
