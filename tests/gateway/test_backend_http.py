"""The backend HTTP client (gateway/backends/http.py) against raw TCP servers on 127.0.0.1 that send
exactly the bytes under test: framing, reuse, errors, streams, deadlines, the stale-connection retry.
https backends and proxies: test_backend_https.py."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import orjson
import pytest

from gateway.backends.http import BackendHTTP
from gateway.errors import (
    BackendClientError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    ReplicaLacksModel,
)
from testkit.processes import free_port, until
from tests.support.raw_server import read_request, server

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(autouse=True)
def no_proxy_from_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from an environment without proxies; the proxy tests set their own."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def client(url: str, **kw: object) -> BackendHTTP:
    return BackendHTTP(
        url,
        name="b",
        connect_timeout_s=kw.pop("connect_timeout_s", 1.0),  # type: ignore[arg-type]
        max_connections=kw.pop("max_connections", 4),
        **kw,
    )  # type: ignore[arg-type]


async def lines(http: BackendHTTP, deadline: float | None = None) -> list[bytes]:
    return [line async for batch in http.line_batches("/x", b"{}", deadline) for line in batch]


def answer(status: bytes, body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 " + status + b"\r\ncontent-length: %d\r\n" % len(body) + b"".join(h + b"\r\n" for h in extra)
    return head + b"\r\n" + body


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


async def keep_alive_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request on the connection with a JSON echo of it, Content-Length framed."""
    while True:
        try:
            first, headers, body = await read_request(reader)
        except asyncio.IncompleteReadError:
            return
        writer.write(
            answer(
                b"200 OK",
                orjson.dumps(
                    {
                        "line": first.decode(),
                        "host": headers[b"host"].decode(),
                        "body": body.decode(),
                        "content_type": headers.get(b"content-type", b"").decode(),
                        "accept_encoding": headers.get(b"accept-encoding", b"").decode(),
                    }
                ),
            )
        )
        await writer.drain()


# -- plain calls ------------------------------------------------------------------------------------


async def test_calls_share_one_kept_alive_connection_and_prefix_the_base_path() -> None:
    async with server(keep_alive_echo) as (url, accepted):
        http = client(url + "/v1")
        try:
            for i in range(3):
                echo = await http.json("POST", "/chat", b"body-%d" % i)
                assert echo["line"] == "POST /v1/chat HTTP/1.1" and echo["body"] == f"body-{i}"
                assert echo["host"] == urlsplit(url).netloc and echo["content_type"] == "application/json"
                assert echo["accept_encoding"] == "", "answers are relayed as sent, never compressed"
        finally:
            await http.aclose()
    assert len(accepted) == 1


def close_delimited(status: bytes, body: bytes) -> Handler:
    """Answers one request with a body that ends when the server closes the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 " + status + b"\r\nconnection: close\r\n\r\n" + body)
        await writer.drain()

    return handler


async def test_an_answer_that_ends_with_its_connection_is_whole_and_the_connection_not_reused() -> None:
    async with server(close_delimited(b"200 OK", b'{"everything": "until close"}')) as (url, accepted):
        http = client(url)
        try:
            for _ in range(2):
                assert await http.json("GET", "/") == {"everything": "until close"}
        finally:
            await http.aclose()
    assert len(accepted) == 2


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (b"404 Not Found", ReplicaLacksModel, "model 'x' not found"),
        (b"429 Too Many Requests", BackendOverloaded, "slow down"),
        (b"503 Service Unavailable", BackendOverloaded, "busy"),
        (b"400 Bad Request", BackendClientError, "bad temperature"),
        (b"500 Internal Server Error", BackendUnavailable, "boom"),
    ],
)
async def test_error_answers_become_the_matching_gateway_error(
    status: bytes, error: type[GatewayError], message: str
) -> None:
    async def failing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(status, orjson.dumps({"error": {"message": message}})))
            await writer.drain()

    async with server(failing) as (url, accepted):
        http = client(url)
        try:
            for _ in range(2):
                with pytest.raises(error) as caught:
                    await http.json("POST", "/x", b"{}")
                assert message in str(caught.value.message)
        finally:
            await http.aclose()
    assert len(accepted) == 1, "an error answer read whole leaves its connection for the next call"


async def test_a_body_cut_short_is_backend_unavailable_and_frees_its_connection_slot() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"only": ')
        await writer.drain()

    async with server(cut) as (url, accepted):
        http = client(url, max_connections=1)
        try:
            for _ in range(2):  # with one slot, the second call proves the first gave its slot back
                with pytest.raises(BackendUnavailable, match="before the answer was whole"):
                    await asyncio.wait_for(http.json("POST", "/x", b"{}"), 5)
        finally:
            await http.aclose()
    assert len(accepted) == 2


async def test_garbage_is_backend_unavailable() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(garbage) as (url, _):
        http = client(url)
        try:
            with pytest.raises(BackendUnavailable, match="malformed HTTP"):
                await http.json("GET", "/")
        finally:
            await http.aclose()


async def test_a_refused_connection_is_backend_unavailable() -> None:
    http = client(f"http://127.0.0.1:{free_port()}")
    try:
        with pytest.raises(BackendUnavailable, match="unreachable: ConnectionRefusedError"):
            await http.json("GET", "/api/tags")
    finally:
        await http.aclose()


async def test_a_large_answer_is_read_whole() -> None:
    big = {"data": ["x" * 1000] * 2000}  # ~2 MB: far beyond any read buffer

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"200 OK", orjson.dumps(big)))
        await writer.drain()
        await reader.read()

    async with server(large) as (url, _):
        http = client(url)
        try:
            assert await asyncio.wait_for(http.json("GET", "/"), 10) == big
        finally:
            await http.aclose()


async def test_the_connection_limit_makes_callers_wait_for_a_connection() -> None:
    in_flight = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal in_flight, peak
        while True:
            await read_request(reader)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.02)  # the server's work: callers overlap meanwhile
            in_flight -= 1
            writer.write(answer(b"200 OK", b"{}"))
            await writer.drain()

    async with server(slow) as (url, accepted):
        http = client(url, max_connections=2)
        try:
            assert await asyncio.gather(*(http.json("GET", "/") for _ in range(6))) == [{}] * 6
        finally:
            await http.aclose()
    assert peak == 2 and len(accepted) == 2


def test_only_http_urls_are_accepted() -> None:
    with pytest.raises(ValueError, match="http"):
        client("ftp://example.com")


async def test_a_closed_client_refuses_calls_clearly() -> None:
    async with server(keep_alive_echo) as (url, _):
        http = client(url)
        await http.json("GET", "/")
        await http.aclose()
        with pytest.raises(BackendUnavailable, match="closed"):
            await http.json("GET", "/")


# -- streams ----------------------------------------------------------------------------------------


async def test_stream_lines_arrive_as_they_are_sent() -> None:
    release = asyncio.Event()

    async def two_parts(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b'{"n": 1}\n'))
        await writer.drain()
        await release.wait()
        writer.write(chunk(b'{"n": 2}\r\n\r\n{"n": 3}') + chunk(b"\n") + b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with server(two_parts) as (url, _):
        http = client(url)
        try:
            stream = http.line_batches("/x", b"{}")
            assert await asyncio.wait_for(anext(stream), 5) == [b'{"n": 1}']  # before the server sent more
            release.set()
            rest = [line async for batch in stream for line in batch]
        finally:
            await http.aclose()
    assert rest == [b'{"n": 2}', b'{"n": 3}'], "CRLF and blank lines dropped, a line split across chunks joined"


async def test_a_backend_dying_mid_stream_is_backend_unavailable_after_the_lines_before() -> None:
    async def dies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"one\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        transport_abort(writer)  # the process died: no final chunk

    async with server(dies) as (url, _):
        http = client(url)
        got: list[bytes] = []
        try:
            with pytest.raises(BackendUnavailable):
                async for batch in http.line_batches("/x", b"{}"):
                    got += batch
        finally:
            await http.aclose()
    assert got == [b"one"]


def transport_abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a killed process's socket is."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def slow_lines(count: int, gap_s: float) -> Handler:
    """A chunked stream of `count` lines, `gap_s` apart, on every request of the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(CHUNKED_HEAD)
            for i in range(count):
                writer.write(chunk(b"line %d\n" % i))
                await writer.drain()
                await asyncio.sleep(gap_s)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    return handler


async def test_leaving_a_stream_early_closes_its_connection_instead_of_reusing_it() -> None:
    async with server(slow_lines(2, 0.1)) as (url, accepted):
        http = client(url)
        try:
            stream = http.line_batches("/x", b"{}")
            assert await anext(stream) == [b"line 0"]
            await stream.aclose()  # the client went away
            assert await lines(http) == [b"line 0", b"line 1"]
        finally:
            await http.aclose()
    assert len(accepted) == 2, "a half-read answer must not leave its bytes for the next request"


async def test_a_stream_read_to_its_end_leaves_its_connection_for_the_next() -> None:
    async with server(slow_lines(2, 0)) as (url, accepted):
        http = client(url)
        try:
            for _ in range(3):
                assert await lines(http) == [b"line 0", b"line 1"]
        finally:
            await http.aclose()
    assert len(accepted) == 1


async def test_cancelling_a_stream_closes_its_connection() -> None:
    server_saw_close = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(CHUNKED_HEAD + chunk(b"first\n"))
        await writer.drain()
        await reader.read()  # returns when the client closes its end
        server_saw_close.set()

    async with server(endless) as (url, _):
        http = client(url)
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in http.line_batches("/x", b"{}"):
                first.set()

        task = asyncio.create_task(consume())
        try:
            await asyncio.wait_for(first.wait(), 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(server_saw_close.wait(), 5)  # closed at once, not at aclose
        finally:
            await http.aclose()


async def test_a_stream_past_its_deadline_raises_backend_timeout() -> None:
    async with server(slow_lines(10, 0.1)) as (url, _):
        http = client(url)
        got: list[bytes] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(BackendTimeout):
                async for batch in http.line_batches("/x", b"{}", deadline=started + 0.35):
                    got += batch
        finally:
            await http.aclose()
        assert 0.3 < loop.time() - started < 2.0
    assert 2 <= len(got) <= 5


async def test_a_deadline_already_past_is_backend_timeout_without_a_request() -> None:
    async with server(slow_lines(1, 0)) as (url, accepted):
        http = client(url)
        try:
            with pytest.raises(BackendTimeout):
                await lines(http, deadline=asyncio.get_running_loop().time() - 1)
        finally:
            await http.aclose()
    assert accepted == []


async def test_a_caller_timing_out_before_the_first_line_frees_the_connection() -> None:
    """What the serving layer's first-token timeout relies on: cancelling a call still waiting for the
    answer's head closes that connection, and the next call gets its slot."""
    connections = 0

    async def first_hangs(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await read_request(reader)
            await reader.read()  # never answers
            return
        await slow_lines(1, 0)(reader, writer)

    async with server(first_hangs) as (url, accepted):
        http = client(url, max_connections=1)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await lines(http)
            assert await asyncio.wait_for(lines(http), 5) == [b"line 0"]
        finally:
            await http.aclose()
    assert len(accepted) == 2


# -- connect timeout --------------------------------------------------------------------------------


async def test_a_backend_that_never_completes_the_tls_handshake_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async with server(silent) as (url, _):
        http = client(url.replace("http://", "https://"), connect_timeout_s=0.2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(BackendTimeout):
                await http.json("GET", "/api/tags")
        finally:
            await http.aclose()
        assert loop.time() - started < 2.0


async def test_a_backend_that_never_accepts_the_connection_times_out() -> None:
    # A listening socket whose accept queue is full: the kernel leaves further SYNs unanswered.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    http = client(f"http://127.0.0.1:{port}", connect_timeout_s=0.3)
    try:
        with pytest.raises(BackendTimeout):
            await asyncio.wait_for(http.json("GET", "/api/tags"), 5)
    finally:
        await http.aclose()
        for sock in (*fillers, listener):
            sock.close()


# -- a kept-alive connection the server closed --------------------------------------------------------


def drops_second_request(how: str, requests: list[bytes]) -> Handler:
    """Answers the first request of each connection; on the second, closes the connection without a
    byte of answer, as a server whose keep-alive timeout fired just as the request arrived."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in range(2):
            _, _, body = await read_request(reader)
            requests.append(body)
            if n == 1:
                if how == "reset":
                    transport_abort(writer)
                return
            writer.write(answer(b"200 OK", orjson.dumps({"got": body.decode()})))
            await writer.drain()

    return handler


@pytest.mark.parametrize("how", ["closed", "reset"])
async def test_a_post_on_a_kept_alive_connection_the_server_closed_is_sent_again(how: str) -> None:
    requests: list[bytes] = []
    async with server(drops_second_request(how, requests)) as (url, accepted):
        http = client(url)
        try:
            assert await http.json("POST", "/x", b"first") == {"got": "first"}
            assert await http.json("POST", "/x", b"second") == {"got": "second"}  # the caller sees no error
        finally:
            await http.aclose()
    assert requests == [b"first", b"second", b"second"] and len(accepted) == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    closed = 0

    async def idle_timeout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        while True:
            try:
                await asyncio.wait_for(read_request(reader), 0.05)  # a short keep-alive timeout
            except TimeoutError:
                closed += 1
                return
            writer.write(answer(b"200 OK", b"{}"))
            await writer.drain()

    async with server(idle_timeout) as (url, accepted):
        http = client(url)
        try:
            for i in range(3):
                assert await http.json("POST", "/x", b"{}") == {}
                await until(lambda i=i: closed == i + 1)  # the server closed the idle connection
        finally:
            await http.aclose()
    assert len(accepted) == 3


async def test_no_second_try_once_the_answer_began() -> None:
    requests = 0

    async def cuts_the_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1
        writer.write(answer(b"200 OK", b"{}"))
        await writer.drain()
        await read_request(reader)
        requests += 1
        writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"partial')
        await writer.drain()

    async with server(cuts_the_second) as (url, _):
        http = client(url)
        try:
            await http.json("POST", "/x", b"{}")
            with pytest.raises(BackendUnavailable):
                await http.json("POST", "/x", b"{}")
        finally:
            await http.aclose()
    assert requests == 2


async def test_no_second_try_on_a_fresh_connection_that_got_no_answer() -> None:
    requests = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        await read_request(reader)
        requests += 1

    async with server(hang_up) as (url, accepted):
        http = client(url, max_connections=1)
        try:
            for _ in range(2):  # with one slot, the second call proves the first gave its slot back
                with pytest.raises(BackendUnavailable):
                    await asyncio.wait_for(http.json("POST", "/x", b"{}"), 5)
        finally:
            await http.aclose()
    assert requests == 2 and len(accepted) == 2
