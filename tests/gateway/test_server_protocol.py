"""A response head leaves in the same socket write as the body's first bytes (gateway/server_protocol.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import uvicorn

from gateway.server_protocol import GatewayHttpProtocol, HeadHoldingTransport
from tests.support.processes import free_port

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_head_and_first_body_bytes_are_one_write_and_the_rest_passes_through() -> None:
    real = RecordingTransport()
    transport = HeadHoldingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    assert real.writes == []
    transport.write(b"ok")
    transport.write(b"more")
    assert real.writes == [HEAD + b"ok", b"more"]
    await asyncio.sleep(0)  # the end-of-turn release finds nothing held
    assert real.writes == [HEAD + b"ok", b"more"]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # everything else goes straight through


async def test_a_head_without_body_leaves_at_the_end_of_the_turn() -> None:
    real = RecordingTransport()
    transport = HeadHoldingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 204 No Content\r\n\r\n"]


async def test_closing_writes_a_held_head_first() -> None:
    real = RecordingTransport()
    transport = HeadHoldingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(HEAD)
    transport.close()
    assert real.writes == [HEAD] and real.closed


WRITES: list[bytes] = []  # what reached the socket, across the test's connections


class _Recorder:
    """Wraps the real transport uvicorn hands the protocol, recording what reaches the socket."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        WRITES.append(data)
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RecordedProtocol(GatewayHttpProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_Recorder(transport))  # type: ignore[arg-type]


async def app(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/plain":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"hello"})
    else:  # a stream: first part, then its last part with the end of the body
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"one", "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": b"two", "more_body": False})


async def test_through_uvicorn_a_plain_answer_is_one_write_and_a_stream_two() -> None:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, http=RecordedProtocol, lifespan="off",
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # up to 5 s for the server to listen
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            WRITES.clear()
            r = await client.get("/plain")
            assert r.text == "hello"
            assert len(WRITES) == 1 and WRITES[0].startswith(b"HTTP/1.1 200")
            WRITES.clear()
            r = await client.get("/stream")
            assert r.text == "onetwo"
            assert len(WRITES) == 2  # head + "one"; "two" + the chunked terminator
            assert WRITES[0].startswith(b"HTTP/1.1 200") and WRITES[0].endswith(b"3\r\none\r\n")
            assert WRITES[1] == b"3\r\ntwo\r\n0\r\n\r\n"
    finally:
        server.should_exit = True
        await task
