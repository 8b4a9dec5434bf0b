"""The backend HTTP client with https backends (a test CA made per run) and proxies from the
environment, on its own and through the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from aiohttp import web

from gateway.errors import BackendUnavailable
from testkit.processes import free_port, python_service
from tests.gateway.test_backend_http import client, keep_alive_echo, lines
from tests.support.gateway import ADMIN_KEY, running_gateway
from tests.support.raw_server import read_request, server
from tests.support.tls import LocalCA, make_test_ca


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return make_test_ca(tmp_path_factory.mktemp("tls"))


@pytest.fixture(autouse=True)
def no_proxy_from_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from an environment without proxies; the proxy tests set their own."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# -- https ------------------------------------------------------------------------------------------


@asynccontextmanager
async def https_backend(ca: LocalCA) -> AsyncIterator[str]:
    """An aiohttp server with the test CA's certificate: a JSON route and an NDJSON stream route."""

    async def tags(_: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "m:1"}]})

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await response.prepare(request)
        for i in range(3):
            await response.write(b'{"n": %d}\n' % i)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/x", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ca.server_context()).start()
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_an_https_backend_signed_by_a_trusted_ca(ca: LocalCA) -> None:
    async with https_backend(ca) as url:
        http = client(url, ca_file=str(ca.ca_file))
        try:
            assert await http.json("GET", "/api/tags") == {"models": [{"name": "m:1"}]}
            assert await lines(http) == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
        finally:
            await http.aclose()


async def test_an_untrusted_certificate_is_a_clear_backend_unavailable(ca: LocalCA, tmp_path: Path) -> None:
    other = make_test_ca(tmp_path)  # a CA that did not sign the server's certificate
    async with https_backend(ca) as url:
        for http in (client(url), client(url, ca_file=str(other.ca_file))):
            try:
                with pytest.raises(BackendUnavailable, match="TLS certificate not trusted"):
                    await http.json("GET", "/api/tags")
            finally:
                await http.aclose()


# -- proxies from the environment -------------------------------------------------------------------


@asynccontextmanager
async def forward_proxy() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A plain-HTTP forward proxy: records each request line it relays, one upstream call per request."""
    seen: list[bytes] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                first, headers, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            seen.append(first)
            method, target, version = first.split(b" ")
            if method == b"CONNECT":  # https through the proxy: a TCP tunnel, TLS end to end
                await tunnel(target, reader, writer)
                return
            parts = urlsplit(target.decode())
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port)
            kept = b"".join(k + b": " + v + b"\r\n" for k, v in headers.items() if not k.startswith(b"proxy-"))
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            up_writer.write(b"%s %s %s\r\n%s\r\n%s" % (method, path.encode(), version, kept, body))
            head = await up_reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            writer.write(head + await up_reader.readexactly(length))
            await writer.drain()
            up_writer.close()

    async with server(relay) as (url, _):
        yield url, seen


async def tunnel(target: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    host, port = target.decode().rsplit(":", 1)
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
        dst.close()

    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def test_http_proxy_from_the_environment_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server(keep_alive_echo) as (url, _), forward_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        http = client(url + "/v1")
        try:
            echo = await http.json("POST", "/chat", b"via proxy")
        finally:
            await http.aclose()
    assert seen == [f"POST {url}/v1/chat HTTP/1.1".encode()]
    assert echo["line"] == "POST /v1/chat HTTP/1.1" and echo["body"] == "via proxy"


async def test_no_proxy_exempts_a_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    async with server(keep_alive_echo) as (url, _), forward_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        http = client(url)
        try:
            assert (await http.json("POST", "/chat", b"direct"))["body"] == "direct"
        finally:
            await http.aclose()
    assert seen == []


# -- the gateway with https backends ----------------------------------------------------------------

TLS_DOUBLE = """
import sys, uvicorn
from tests.doubles.ollama_double import build_app
from tests.doubles.ollama_state import Knobs
port, cert, key = sys.argv[1:4]
uvicorn.run(build_app(models=["smollm2:135m"], knobs=Knobs()), host="127.0.0.1", port=int(port),
            ssl_certfile=cert, ssl_keyfile=key, log_level="warning")
"""


@pytest.fixture(scope="module")
def tls_ollama_double(ca: LocalCA) -> Iterator[str]:
    """The Ollama double (native API and its /v1 OpenAI API) served over https with the test CA's certificate."""
    port = free_port()
    double = (
        python_service("ollama-double-tls", ["-c", TLS_DOUBLE, str(port), str(ca.cert_file), str(ca.key_file)], port)
        .start()
        .wait_port()
    )
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        double.stop()


@pytest.mark.parametrize("kind", ["ollama", "openai"])
def test_the_gateway_serves_from_an_https_backend_trusted_through_ssl_cert_file(
    kind: str, tls_ollama_double: str, ca: LocalCA
) -> None:
    with running_gateway([(kind, tls_ollama_double)], env={"SSL_CERT_FILE": str(ca.ca_file)}) as gw:
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)
        plain = sdk.chat.completions.create(model="smollm2:135m", messages=[{"role": "user", "content": "hi"}])
        streamed = "".join(
            c.choices[0].delta.content or ""
            for c in sdk.chat.completions.create(
                model="smollm2:135m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            if c.choices
        )
    assert plain.choices[0].message.content and streamed == plain.choices[0].message.content


def test_the_gateway_refuses_an_untrusted_https_backend_clearly(tls_ollama_double: str) -> None:
    with running_gateway([("ollama", tls_ollama_double)]) as gw:  # the platform's CAs only
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=30)
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="smollm2:135m", messages=[{"role": "user", "content": "hi"}])
        logs = gw.logs()
    assert caught.value.status_code == 404  # no replica could say what it serves
    assert "TLS certificate not trusted" in logs and "Traceback" not in logs


async def test_https_proxy_from_the_environment_tunnels_to_an_https_backend(
    ca: LocalCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with https_backend(ca) as url, forward_proxy() as (proxy, seen):
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        http = client(url, ca_file=str(ca.ca_file))
        try:
            assert await http.json("GET", "/api/tags") == {"models": [{"name": "m:1"}]}
        finally:
            await http.aclose()
    assert seen == [f"CONNECT {urlsplit(url).netloc} HTTP/1.1".encode()]
