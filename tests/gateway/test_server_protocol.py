"""The gateway's response path under uvicorn (gateway/server_protocol.py): the bytes uvicorn's own
cycle writes, with each head leaving in the same socket write as the body's first bytes."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from gateway.server_protocol import GatewayCycle, GatewayHttpProtocol
from tests.support.processes import free_port

DEFAULT_HEADERS = [(b"server", b"uvicorn"), (b"date", b"Mon, 23 Nov 2026 09:00:00 GMT")]


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

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def cycle_of(kind: type[RequestResponseCycle], *, method: str = "GET", keep_alive: bool = True
             ) -> tuple[RequestResponseCycle, RecordingTransport]:
    transport = RecordingTransport()
    cycle = kind(scope={"method": method, "http_version": "1.1", "path": "/", "query_string": b""},  # type: ignore[arg-type]
                 transport=transport, flow=FlowControl(transport), logger=logging.getLogger("test"),  # type: ignore[arg-type]
                 access_logger=logging.getLogger("test.access"), access_log=False, default_headers=DEFAULT_HEADERS,
                 message_event=asyncio.Event(), expect_100_continue=False, keep_alive=keep_alive,
                 on_response=lambda: None)
    if isinstance(cycle, GatewayCycle):
        cycle.loop = asyncio.get_running_loop()
    return cycle, transport


async def outcome(kind: type[RequestResponseCycle], messages: list[dict[str, Any]], **options: Any
                  ) -> tuple[bytes | str, bool, bool, bool, int]:
    """What a cycle of `kind` puts on the wire for `messages` (or the error it raises), and its end state."""
    cycle, transport = cycle_of(kind, **options)
    try:
        for message in messages:
            await cycle.send(message)
        await asyncio.sleep(0)  # a head held without a body leaves at the end of the turn
        wire: bytes | str = b"".join(transport.writes)
    except RuntimeError as exc:
        wire = f"RuntimeError: {exc}"
    return wire, transport.closed, cycle.keep_alive, cycle.response_complete, len(transport.writes)


def start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": headers or []}


def body(data: bytes = b"", more: bool = False) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


CASES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "plain": ([start(200, [(b"content-type", b"application/json"), (b"content-length", b"2")]), body(b"{}")], {}),
    "stream, chunked by default": ([start(200, [(b"content-type", b"text/event-stream")]), body(b"one", True),
                                    body(b"", True), body(b"two", True), body(b"three")], {}),
    "mixed-case names are lower-cased": ([start(201, [(b"Content-Length", b"2"), (b"X-Request-ID", b"Ab9")]),
                                          body(b"ok")], {}),
    "explicit chunked": ([start(200, [(b"transfer-encoding", b"Chunked")]), body(b"a", True), body(b"")], {}),
    "connection: close": ([start(200, [(b"content-length", b"0"), (b"connection", b"keep-alive, Close")]),
                           body()], {}),
    "client asked to close": ([start(200, [(b"content-length", b"1")]), body(b"x")], {"keep_alive": False}),
    "HEAD": ([start(200, [(b"content-length", b"9")]), body()], {"method": "HEAD"}),
    "204 without framing": ([start(204), body()], {}),
    "only the first content-length counts": ([start(200, [(b"content-length", b"1"), (b"content-length", b"5")]),
                                              body(b"x")], {}),
    "no headers at all": ([start(200), body(b"hi")], {}),
    "head without body yet": ([start(200, [(b"content-type", b"text/plain")])], {}),
    "bad header name": ([start(200, [(b"x-fine", b"1"), (b"bad name", b"1")])], {}),
    "header injection in a name": ([start(200, [(b"x-a\r\nx-b", b"1")])], {}),
    "bad header value": ([start(200, [(b"x-fine", b"a\tb"), (b"x-a", b"1\r\nx-b: 2")])], {}),
    "body longer than content-length": ([start(200, [(b"content-length", b"1")]), body(b"xy")], {}),
    "body shorter than content-length": ([start(200, [(b"content-length", b"3")]), body(b"xy")], {}),
    "body before start": ([body(b"x")], {}),
    "start twice": ([start(200, [(b"content-length", b"0")]), start(200)], {}),
    "after the end": ([start(200, [(b"content-length", b"0")]), body(), body(b"x")], {}),
}


@pytest.mark.parametrize("case", CASES)
async def test_the_wire_bytes_and_errors_are_uvicorns(case: str) -> None:
    messages, options = CASES[case]
    theirs = await outcome(RequestResponseCycle, messages, **options)
    ours = await outcome(GatewayCycle, messages, **options)
    assert ours[:4] == theirs[:4]


async def test_the_head_leaves_with_the_first_body_bytes() -> None:
    wire, _, _, complete, writes = await outcome(GatewayCycle, CASES["plain"][0])
    assert complete and writes == 1 and wire.startswith(b"HTTP/1.1 200 OK\r\n")  # type: ignore[union-attr]
    *_, writes = await outcome(GatewayCycle, CASES["stream, chunked by default"][0])
    assert writes == 3  # head + "one"; "two"; "three" with the terminator (the empty part writes nothing)
    *_, writes = await outcome(RequestResponseCycle, CASES["plain"][0])
    assert writes == 2  # what uvicorn does on its own


async def test_a_head_without_body_waits_only_to_the_end_of_the_turn() -> None:
    cycle, transport = cycle_of(GatewayCycle)
    await cycle.send(start(204))
    assert transport.writes == []
    await asyncio.sleep(0)
    assert transport.writes == [b"HTTP/1.1 204 No Content\r\nserver: uvicorn\r\n"
                                b"date: Mon, 23 Nov 2026 09:00:00 GMT\r\n\r\n"]


def test_on_headers_complete_is_still_a_copy_of_the_pinned_uvicorns() -> None:
    """GatewayHttpProtocol.on_headers_complete copies uvicorn 0.54.0's to build a GatewayCycle; after an
    upgrade that changed the original, merge the change into the copy and record the new digest."""
    source = inspect.getsource(HttpToolsProtocol.on_headers_complete).encode()
    assert hashlib.sha256(source).hexdigest()[:16] == "1ea8589acfad92d8", "uvicorn's on_headers_complete changed"


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
            r = await client.post("/plain?x=1", content=b"ignored")  # pipelining aside, several requests per connection
            assert r.text == "hello" and r.headers["server"] == "uvicorn"
    finally:
        server.should_exit = True
        await task
