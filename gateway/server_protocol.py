"""uvicorn's httptools protocol, with each response head leaving in the same write as its first body bytes.

uvicorn writes the status line and headers as soon as the app sends `http.response.start`, and the
body with the next `send`: two socket writes, two wake-ups of the client, for every answer (the
front layer sends the two messages back to back). Holding the head until the body's first write
joins them: one `send()` per unary answer instead of two, and a stream's head leaves with its first
chunk (which the gateway already has when it starts the response). A head with no body write in
the same loop turn (HEAD, 204, a stream still waiting) leaves at the end of that turn, so nothing
waits on the app.

Measured (strace -c on the gateway, 50 clients): socket writes per plain request 4 -> 3, per streamed
one 6 -> 3 together with FinalPart (gateway/protocol.py); bench/reports/2026-11-23/README.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_START = b"HTTP/1.1 "
_HEAD_END = b"\r\n\r\n"


class HeadHoldingTransport:
    """The connection's transport for uvicorn; everything but `write` and `close` goes straight through."""

    __slots__ = ("_transport", "_loop", "_head")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        head = self._head
        if head is not None:  # the body's first bytes: one write with the head
            self._head = None
            self._transport.write(head + data)
        elif data.startswith(_HEAD_START) and data.endswith(_HEAD_END):  # uvicorn writes a head alone
            self._head = data
            self._loop.call_soon(self.release)
        else:
            self._transport.write(data)

    def release(self) -> None:
        """Write a held head now (end of the loop turn, or before closing)."""
        head = self._head
        if head is not None:
            self._head = None
            if not self._transport.is_closing():
                self._transport.write(head)

    def close(self) -> None:
        self.release()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self._transport, name)


class GatewayHttpProtocol(HttpToolsProtocol):
    """Passed to uvicorn as `http=`; one per client connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadHoldingTransport(transport, self.loop))  # type: ignore[arg-type]
