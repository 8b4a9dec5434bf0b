"""A lean HTTP/1.1 client for the one hop the gateway makes on every request: to a backend replica.

Keep-alive connections per replica on asyncio Protocols; responses parsed by httptools (llhttp,
the parser uvicorn reads requests with), bodies handed over piece by piece as they arrive, so a
stream is relayed without buffering. It does what a backend call needs and no more: one request
at a time per connection, Content-Length request bodies, chunked / Content-Length / until-close
response bodies, http and https, a connect timeout (the serving layer owns every other deadline
and cancels; a cancelled or unfinished exchange closes its connection rather than reuse it).

Why not aiohttp (used before): `python -m bench.transport_cost` measures the client-side CPU
of one call; see that file's table. On the gateway's request path the client was the largest
single cost after FastAPI's layers were gone.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httptools

# Pause reading a connection when this much body is buffered and not yet consumed (a slow client
# downstream of a fast backend): the backend then waits on TCP instead of the gateway growing.
HIGH_WATER_BYTES = 256 * 1024


class ConnectionClosed(ConnectionError):
    """The connection ended before the response was whole (the backend died or cut the body)."""


class BadResponse(ConnectionError):
    """The backend's bytes are not HTTP/1.1."""


class Response:
    """Status and headers once they arrived; the body through `read()` or `next_piece()`."""

    __slots__ = ("status", "headers", "_conn", "_pieces", "_buffered", "_waiter", "_error", "complete", "_timer",
                 "_fresh")

    def __init__(self, conn: "_Connection") -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}  # lower-case names; the last value wins
        self._conn = conn
        self._pieces: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.complete = False
        self._timer: asyncio.TimerHandle | None = None
        self._fresh = False  # body bytes arrived during the current read (see `_Connection.data_received`)

    def expire_at(self, when: float) -> None:
        """The body must be whole by loop time `when`; after that reading it raises TimeoutError (and the
        connection is not reused). One timer for the whole body, instead of one per wait."""
        self._cancel_deadline()
        self._timer = asyncio.get_running_loop().call_at(when, self._finish, TimeoutError("response deadline passed"))

    # -- fed by the connection --------------------------------------------------------------------
    # Fed by `_Connection.on_body` (one piece per HTTP chunk, appended there), then `_arrived` once
    # per socket read: the reader is woken once however many chunks the read held.
    def _arrived(self) -> None:
        self._fresh = False
        if self._buffered > HIGH_WATER_BYTES:
            self._conn.pause()
        self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if not self.complete and self._error is None:
            if error is None:
                self.complete = True
            else:
                self._error = error
        self._cancel_deadline()
        self._wake()

    def _cancel_deadline(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- read by the caller -----------------------------------------------------------------------
    async def next_piece(self) -> bytes | None:
        """Everything that arrived since the last call, as one piece (waiting for some), or None once the
        body is whole; raises ConnectionClosed if the body is cut short. A coroutine per piece rather
        than an async generator: a stream's relay no longer pays the loop's generator hooks for it."""
        while True:
            if self._pieces:  # everything that arrived so far, as one piece: the caller batches by read
                return self._take()
            if self.complete:
                return None
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        """The whole body."""
        parts: list[bytes] = []
        while True:
            if self._pieces:
                parts.append(self._take())  # taken as it comes, so a large body never pauses the connection
            if self.complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self._error is not None:
                raise self._error
            await self._wait()

    def _take(self) -> bytes:
        pieces = self._pieces
        piece = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._buffered = 0
        self._conn.resume()
        return piece

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; httptools calls the on_* methods while `data_received` feeds it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: Response | None = None
        self.headers_done: asyncio.Future[None] | None = None
        self.closed = False
        self.reusable = False
        self._until_close = False  # no length, not chunked: the body ends when the server closes
        self._paused = False

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes on an idle connection (a server's 408, garbage): never reuse it
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"malformed HTTP response: {exc}"))
            self.close()
        if response._fresh:  # a read often holds many chunks (a stream's tokens): one wake-up for all
            response._arrived()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._until_close and self.response is not None and self.headers_done is not None \
                and self.headers_done.done():
            self.response._finish()
        else:
            self._fail(ConnectionClosed("the backend closed the connection before the response was whole"))

    def eof_received(self) -> bool:
        return False  # close our side too

    # -- httptools callbacks ----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        if self.response is not None:
            self.response.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None:
            return
        response.status = self.parser.get_status_code()
        headers = response.headers
        self._until_close = b"content-length" not in headers and b"chunked" not in headers.get(b"transfer-encoding", b"")
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_result(None)

    def on_body(self, body: bytes) -> None:  # once per HTTP chunk (a stream's token): kept to three lines
        response = self.response
        if response is not None:
            response._pieces.append(body)
            response._buffered += len(body)
            response._fresh = True

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive() and not self._until_close
        if self.response is not None:
            self.response._finish()

    # -- used by the pool -------------------------------------------------------------------------
    def start(self, request: bytes) -> Response:
        self.response = Response(self)
        self.headers_done = asyncio.get_running_loop().create_future()
        self.reusable = False
        self._until_close = False
        assert self.transport is not None
        self.transport.write(request)
        return self.response

    def _fail(self, error: BaseException) -> None:
        if self.headers_done is not None and not self.headers_done.done():
            self.headers_done.set_exception(error)
            self.headers_done.exception()  # retrieved: nobody may be waiting (cancelled caller)
        if self.response is not None:
            self.response._finish(error)

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http11Client:
    """Requests to one origin (`base_url`, whose path is prefixed to every request's) over a pool of
    at most `max_connections` keep-alive connections; callers beyond that wait for one to free up."""

    def __init__(self, base_url: str, *, connect_timeout_s: float, max_connections: int,
                 headers: dict[str, str] | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"backend URL must be http(s)://host[:port][/path], got {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.prefix = url.path.rstrip("/")
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        default_port = (url.scheme == "https" and self.port == 443) or (url.scheme == "http" and self.port == 80)
        host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not default_port:
            host_header = f"[{self.host}]:{self.port}"
        fixed = {"host": host_header, "user-agent": "slm-gateway", **{k.lower(): v for k, v in (headers or {}).items()}}
        self._fixed_headers = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode("latin-1")
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    def _head(self, method: str, path: str, body_length: int, extra: dict[str, str] | None) -> bytes:
        lines = f"{method} {self.prefix}{path} HTTP/1.1\r\ncontent-length: {body_length}\r\n".encode("latin-1")
        if extra:
            lines += "".join(f"{k}: {v}\r\n" for k, v in extra.items()).encode("latin-1")
        return lines + self._fixed_headers + b"\r\n"

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            _, conn = await loop.create_connection(_Connection, self.host, self.port, ssl=self._ssl,
                                                   server_hostname=self.host if self._ssl else None)
        return conn

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # most recently used: the least likely to have been closed by the server
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def open(self, method: str, path: str, body: bytes | None = None,
                   headers: dict[str, str] | None = None) -> Response:
        """Send one request; returns once status and headers arrived. The caller reads the body and
        must hand the response to `release`, whatever happens: its connection goes back to the pool
        only if the body was read to its end, and is closed otherwise (error, cancel, early exit).
        A plain coroutine pair rather than a context manager: the generator machinery of one was a
        fifth of the Python calls of a proxied call, on the path every answer waits on."""
        message = self._message(method, path, body, headers)
        await self._slots.acquire()
        try:
            conn = await self._send(message)
        except BaseException:
            self._slots.release()
            raise
        assert conn.response is not None
        return conn.response

    def release(self, response: Response) -> None:
        self._put_back(response._conn)

    @asynccontextmanager
    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> AsyncIterator[Response]:
        """`open` and `release` around a block."""
        response = await self.open(method, path, body, headers)
        try:
            yield response
        finally:
            self.release(response)

    async def fetch(self, method: str, path: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Status and the whole body."""
        response = await self.open(method, path, body, headers)
        try:
            return response.status, await response.read()
        finally:
            self.release(response)

    async def _send(self, message: bytes) -> _Connection:
        """A connection (idle or new) that sent `message` and received the answer's head. If that
        fails the connection is closed here; the caller holds the pool slot either way."""
        conn = self._take_idle() or await self._connect()
        try:
            conn.start(message)
            assert conn.headers_done is not None
            await conn.headers_done
        except BaseException:
            conn.close()
            raise
        return conn

    def _message(self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None) -> bytes:
        if self._closed:
            raise ConnectionClosed("client closed")
        payload = body or b""
        return self._head(method, path, len(payload), headers) + payload

    def _put_back(self, conn: _Connection | None) -> None:
        """Back to the pool if its answer was read to the end, else closed; frees the slot either way."""
        if conn is not None:
            response = conn.response
            if response is not None:
                response._cancel_deadline()
            if response is not None and response.complete and conn.reusable and not conn.closed and not self._closed:
                conn.response = None
                conn.headers_done = None
                self._idle.append(conn)
            else:
                conn.close()
        self._slots.release()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        await asyncio.sleep(0)  # let the transports close
