"""The backend HTTP/1.1 client against raw TCP servers that send exactly the bytes under test."""

from __future__ import annotations

import asyncio

import pytest

from gateway.backends.http11 import (
    HIGH_WATER_BYTES,
    BadResponse,
    ConnectionClosed,
    Http11Client,
)
from tests.support.processes import until
from tests.support.raw_server import read_request, server


def client(url: str, **kw: object) -> Http11Client:
    return Http11Client(url, connect_timeout_s=1.0, max_connections=kw.pop("max_connections", 4),  # type: ignore[arg-type]
                        headers={"content-type": "application/json"})


async def keep_alive_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with its request line and body, Content-Length framed."""
    while True:
        try:
            first, headers, body = await read_request(reader)
        except asyncio.IncompleteReadError:
            return
        payload = first + b"|" + headers[b"host"] + b"|" + body
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(payload), payload))
        await writer.drain()


async def test_sequential_requests_reuse_one_connection_and_prefix_the_base_path() -> None:
    async with server(keep_alive_echo) as (url, accepted):
        http = client(url + "/v1")
        for i in range(3):
            async with http.request("POST", "/chat", b"body-%d" % i) as resp:
                assert resp.status == 200
                port = url.rsplit(":", 1)[1]
                assert await resp.read() == b"POST /v1/chat HTTP/1.1|127.0.0.1:" + port.encode() + b"|body-%d" % i
        await http.aclose()
    assert len(accepted) == 1


async def test_fetch_returns_status_and_body_and_reuses_the_connection() -> None:
    async with server(keep_alive_echo) as (url, accepted):
        http = client(url + "/v1")
        port = url.rsplit(":", 1)[1].encode()
        for i in range(3):
            assert await http.fetch("POST", "/chat", b"body-%d" % i) == (
                200, b"POST /v1/chat HTTP/1.1|127.0.0.1:" + port + b"|body-%d" % i)
        await http.aclose()
    assert len(accepted) == 1


def close_delimited(status_line: bytes, body: bytes):  # noqa: ANN201
    """A server answering one request with a body that ends when it closes the connection."""
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(status_line + b"\r\nconnection: close\r\n\r\n" + body)
        await writer.drain()

    return answer


async def test_fetch_does_not_reuse_a_connection_whose_body_ran_until_close() -> None:
    async with server(close_delimited(b"HTTP/1.1 503 Service Unavailable", b"busy")) as (url, accepted):
        http = client(url)
        for _ in range(2):
            assert await http.fetch("GET", "/") == (503, b"busy")
        await http.aclose()
    assert len(accepted) == 2


async def test_fetch_of_a_body_cut_short_raises_and_frees_its_slot() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
            await writer.drain()
            writer.close()
            return

    async with server(cut) as (url, accepted):
        http = client(url, max_connections=1)
        for _ in range(2):  # with one slot, the second call proves the first gave its slot back
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(http.fetch("POST", "/x", b"{}"), 2.0)
        await http.aclose()
    assert len(accepted) == 2


async def test_chunked_body_arrives_piece_by_piece() -> None:
    release = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(chunked) as (url, _):
        http = client(url)
        async with http.request("POST", "/x", b"{}") as resp:
            assert await resp.next_piece() == b"first"  # before the server sent the rest
            release.set()
            assert await resp.next_piece() == b"second"
            assert await resp.next_piece() is None and resp.complete
        await http.aclose()


async def test_body_until_close_is_whole_and_the_connection_is_not_reused() -> None:
    async with server(close_delimited(b"HTTP/1.1 200 OK", b"everything until close")) as (url, accepted):
        http = client(url)
        for _ in range(2):
            async with http.request("GET", "/") as resp:
                assert await resp.read() == b"everything until close"
        await http.aclose()
    assert len(accepted) == 2


async def test_a_body_cut_short_raises_connection_closed() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly part")
        await writer.drain()

    async with server(cut) as (url, _):
        http = client(url)
        async with http.request("POST", "/x", b"{}") as resp:
            with pytest.raises(ConnectionClosed):
                await resp.read()
        await http.aclose()


async def test_no_response_at_all_raises_connection_closed() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with server(hang_up) as (url, _):
        http = client(url, max_connections=1)
        for _ in range(2):  # with one slot, the second call proves the first gave its slot back
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(2.0), http.request("POST", "/x", b"{}"):
                    pass
        await http.aclose()


async def test_garbage_is_a_bad_response() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(garbage) as (url, _):
        http = client(url)
        with pytest.raises(BadResponse):
            async with http.request("GET", "/"):
                pass
        await http.aclose()


async def test_refused_connection_is_an_os_error() -> None:
    async with server(keep_alive_echo) as (url, _):
        pass  # closed again: nothing listens on that port now
    http = client(url)
    with pytest.raises(OSError):
        async with http.request("GET", "/"):
            pass
    await http.aclose()


async def test_leaving_early_closes_the_connection_instead_of_reusing_it() -> None:
    async def slow_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"3\r\ntwo\r\n0\r\n\r\n")
            await writer.drain()

    async with server(slow_stream) as (url, accepted):
        http = client(url)
        async with http.request("POST", "/x", b"{}") as resp:
            assert await resp.next_piece() == b"one"  # the caller stops here (client gone, cancelled)
        async with http.request("POST", "/x", b"{}") as resp:
            assert await resp.read() == b"onetwo"
        await http.aclose()
    assert len(accepted) == 2, "a half-read response must not leave its bytes for the next request"


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        # keep-alive was implied, but the server closes the idle connection (as uvicorn does after 5 s)

    async with server(one_then_close) as (url, accepted):
        http = client(url)
        for _ in range(3):
            async with http.request("GET", "/") as resp:
                assert await resp.read() == b"ok"
            await until(lambda: http._idle[-1].closed)  # the FIN arrives while the connection sits in the pool
        await http.aclose()
    assert len(accepted) == 3


async def test_pool_limit_makes_callers_wait_for_a_connection() -> None:
    in_flight = 0
    peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        while True:
            await read_request(reader)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)
            in_flight -= 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()

    async with server(slow) as (url, accepted):
        http = client(url, max_connections=2)

        async def call() -> int:
            async with http.request("GET", "/") as resp:
                await resp.read()
                return resp.status

        assert await asyncio.gather(*(call() for _ in range(6))) == [200] * 6
        await http.aclose()
    assert peak == 2 and len(accepted) == 2


BIG = HIGH_WATER_BYTES * 4  # a body the client must pause for
BLOCK = 65536


async def big_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers with BIG bytes as fast as TCP takes them, block i filled with letter i (A, B, ...)."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % BIG)
    for i in range(BIG // BLOCK):
        writer.write(bytes([65 + i % 26]) * BLOCK)
        await writer.drain()
    await reader.read()


async def test_a_slow_reader_pauses_the_socket_and_still_gets_every_byte() -> None:
    async with server(big_body) as (url, _):
        http = client(url)
        async with http.request("GET", "/") as resp:
            await until(lambda: resp._conn._paused)  # the server ran ahead: the client stopped reading
            buffered = resp._buffered
            got = 0
            while (piece := await resp.next_piece()) is not None:
                got += len(piece)
        await http.aclose()
    assert got == BIG
    assert buffered <= HIGH_WATER_BYTES + BLOCK * 4, "reading paused near the high-water mark"


async def test_read_takes_a_body_larger_than_the_high_water_mark_whole() -> None:
    async with server(big_body) as (url, _):
        http = client(url)
        async with http.request("GET", "/") as resp:
            body = await asyncio.wait_for(resp.read(), 10)  # never stuck behind its own paused socket
        await http.aclose()
    assert len(body) == BIG and body[:1] == b"A" and body[-1:] == bytes([65 + (BIG // BLOCK - 1) % 26])


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="http"):
        Http11Client("ftp://example.com", connect_timeout_s=1, max_connections=1)
