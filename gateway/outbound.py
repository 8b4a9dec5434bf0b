"""The aiohttp session every outbound call of the gateway is made on (backends, the JWKS fetch).

One place for the conventions they share: the environment's proxy, TLS verification, a connect
timeout, a bounded keep-alive pool, and answers taken as the server sends them.

The proxy is read from the environment once per session, by the standard library's rules (the
ones aiohttp's `trust_env` applies) rather than with `trust_env` itself: that looks the proxy up
in a worker thread, and reads ~/.netrc for credentials to send, on every request, while a running
gateway's environment never changes and a backend needs no credentials from a netrc file.

A replica found by DNS discovery is one address of its URL's host: its session connects to that
address (a resolver pinned to it), while the URL keeps the host name for TLS and the Host header.
Such a session goes direct: a proxy would resolve the name again and pick any replica.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

# Idle connections are dropped after this long: under the 5 s keep-alive of uvicorn (vLLM) and of
# llama.cpp's server, so a server rarely closes one just as we reuse it (the retry covers the rest).
KEEPALIVE_S = 4.0


def env_proxy(url: str) -> str | None:
    """The proxy HTTP_PROXY / HTTPS_PROXY (and their lower-case forms) name for `url`, unless NO_PROXY
    exempts its host: the standard library's reading of the environment, which aiohttp uses too."""
    parts = urlsplit(url)
    if parts.hostname is None or proxy_bypass(parts.hostname):
        return None
    return getproxies().get(parts.scheme)


class PinnedResolver(AbstractResolver):
    """`host` resolves to `address` alone; any other name through aiohttp's default resolver."""

    def __init__(self, host: str, address: str) -> None:
        self.host, self.address = host, address
        self.family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        self._others = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self.host:
            return await self._others.resolve(host, port, family)
        pinned: ResolveResult = {
            "hostname": host,
            "host": self.address,
            "port": port,
            "family": self.family,
            "proto": 0,
            "flags": socket.AI_NUMERICHOST,
        }
        return [pinned]

    async def close(self) -> None:
        await self._others.close()


def new_session(
    url: str,
    *,
    connect_timeout_s: float,
    total_timeout_s: float | None = None,
    max_connections: int = 100,
    headers: dict[str, str] | None = None,
    ca_file: str | None = None,
    trace_configs: list[aiohttp.TraceConfig] | None = None,
    address: str | None = None,
) -> aiohttp.ClientSession:
    """An aiohttp session for calls to `url`'s origin, on the conventions every outbound call shares:
    the environment's proxy, TLS verified against the platform's CAs (SSL_CERT_FILE honoured) or
    `ca_file` alone, a connect timeout (TLS handshake included), at most `max_connections`
    connections, and no Accept-Encoding (answers are relayed as they come, not decompressed).
    `address`: connect there instead of resolving `url`'s host (and not through a proxy).
    Call inside the running loop."""
    tls: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca_file) if ca_file else True
    host = urlsplit(url).hostname
    connector = aiohttp.TCPConnector(
        limit=max_connections,
        limit_per_host=max_connections,
        ssl=tls,
        keepalive_timeout=KEEPALIVE_S,
        resolver=PinnedResolver(host, address) if address and host else None,
    )
    return aiohttp.ClientSession(
        connector=connector,
        proxy=None if address else env_proxy(url),
        trace_configs=trace_configs,
        headers={"user-agent": "slm-gateway", **(headers or {})},
        skip_auto_headers=("Accept-Encoding",),
        timeout=aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=connect_timeout_s),
    )
