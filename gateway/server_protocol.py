"""uvicorn's httptools protocol with a leaner response path: each head leaves in the same socket write
as its body's first bytes, and is built in one pass instead of a dozen small ones per header.

uvicorn writes the status line and headers as soon as the app sends `http.response.start`, and the
body with the next `send`: two socket writes, two wake-ups of the client, for every answer (the
front layer sends the two messages back to back). `GatewayCycle` holds the head until the body's
first write: one `send()` per unary answer instead of two, and a stream's head leaves with its first
chunk (which the gateway already has when it starts the response). A head with no body write in the
same loop turn (HEAD, 204, a stream still waiting) leaves at the end of that turn, so nothing waits
on the app.

uvicorn also checks every header on the way out with two regular expressions, lower-cases and
compares each name, and appends it piece by piece: ~60 C calls for a gateway answer's ~12 headers.
Here the same checks run once over all names and once over all values (a forbidden byte is found in
the joined bytes exactly when it is in one of them), the names are lower-cased in one call, and only
the framing headers (content-length, transfer-encoding, connection) are looked at one by one. The
bytes written are uvicorn's. One difference: an app that fails after starting its response, in the
same loop turn, gets its connection closed without the head (uvicorn sends the head, then closes);
the client sees a broken response either way.

Measured: socket writes per plain request 4 -> 3, per streamed one 6 -> 3 together with FinalPart
(gateway/protocol.py); 44 fewer C calls per plain answer and the response cycle's CPU per streamed
answer 9.7-10.0 -> 9.0-9.2 us (`python -m bench.response_cycle`). That is CPU saved under load; when
requests come one at a time the step costs what the memory it touches costs (bench/reports/2026-11-23/
README.md, "Sixth pass"). `on_headers_complete` is uvicorn 0.54.0's own, with this cycle class;
tests/gateway/test_server_protocol.py notices when a uvicorn upgrade changes the original.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import service_unavailable
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"connection"))


class GatewayCycle(RequestResponseCycle):
    """One request and its response on a connection; only the response path differs from uvicorn's."""

    # Set by the protocol right after construction rather than through an __init__ of our own: a
    # keyword-forwarding __init__ cost ~1 us per response (`python -m bench.response_cycle`, 10.1
    # against 9.1 us), as much as the one-pass head saves.
    loop: asyncio.AbstractEventLoop
    _held: bytes | None = None  # a head waiting for the body's first bytes

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self.response_started = True
            self.waiting_for_100_continue = False
            if self.access_log:
                self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(self.scope), self.scope["method"],
                                        get_path_with_query_string(self.scope), self.scope["http_version"],
                                        message["status"])
            self._held = self._head(message["status"], self.default_headers + list(message.get("headers", ())))
            self.loop.call_soon(self.release_head)
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
            self._body(message.get("body", b""), message.get("more_body", False))
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")

    def _head(self, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
        """The status line and headers, with uvicorn's checks and framing rules."""
        content = [STATUS_LINE[status]]
        has_connection_close = False
        if headers:
            names, values = zip(*headers)
            if HEADER_RE.search(b"".join(names)):
                raise RuntimeError("Invalid HTTP header name.")
            if HEADER_VALUE_RE.search(b"".join(values)):
                raise RuntimeError("Invalid HTTP header value.")
            # "\n" cannot be in a name (checked above), so the split gives the names back, lower-cased.
            for name, value in zip(b"\n".join(names).lower().split(b"\n"), values):
                if name in _FRAMING:
                    has_connection_close |= self._framing(name, value)
                content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not has_connection_close:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True  # neither content-length nor transfer-encoding given
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)

    def _framing(self, name: bytes, value: bytes) -> bool:
        """uvicorn's reading of one framing header; True for `connection: close`."""
        if name == b"content-length":
            if self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
        elif name == b"transfer-encoding":
            if value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
        elif b"close" in [token.lower().strip() for token in value.split(b",")]:
            self.keep_alive = False
            return True
        return False

    def _body(self, body: bytes, more_body: bool) -> None:
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            self._write(b"")
        elif self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            self._write(data if more_body else data + b"0\r\n\r\n")
        else:
            if len(body) > self.expected_content_length:
                raise RuntimeError("Response content longer than Content-Length")
            self.expected_content_length -= len(body)
            self._write(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _write(self, data: bytes) -> None:
        head = self._held
        if head is not None:  # the body's first bytes: one write with the head
            self._held = None
            data = head + data
        if data:
            self.transport.write(data)

    def release_head(self) -> None:
        """Write a held head now: the end of the loop turn in which it was sent, with no body write."""
        head = self._held
        if head is not None:
            self._held = None
            if not self.transport.is_closing():
                self.transport.write(head)


class GatewayHttpProtocol(HttpToolsProtocol):
    """Passed to uvicorn as `http=`; one per client connection."""

    def on_headers_complete(self) -> None:
        # uvicorn 0.54.0's, line for line, except the cycle class (and its loop).
        http_version = self.parser.get_http_version()
        method = self.parser.get_method()
        self.scope["method"] = method.decode("ascii")
        if http_version != "1.1":
            self.scope["http_version"] = http_version
        if self.parser.should_upgrade() and self._should_upgrade():
            return
        parsed_url = httptools.parse_url(self.url)
        raw_path = parsed_url.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        full_path = self.root_path + path
        full_raw_path = self.root_path.encode("ascii") + raw_path
        self.scope["path"] = full_path
        self.scope["raw_path"] = full_raw_path
        self.scope["query_string"] = parsed_url.query or b""

        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            app = service_unavailable
            self.logger.warning("Exceeded concurrency limit.")
        else:
            app = self.app

        existing_cycle = self.cycle
        self.cycle = GatewayCycle(
            scope=self.scope,
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        self.cycle.loop = self.loop
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:  # pipelined requests wait their turn
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))
