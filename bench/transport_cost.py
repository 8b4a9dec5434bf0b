"""CPU cost of one proxied call per HTTP client library, against the Ollama double.

    python -m bench.transport_cost [--requests 1500]

Why the gateway's backends use their own HTTP/1.1 client: this prints the process CPU time and
wall time per request for the official `ollama` client (httpx inside), a raw httpx AsyncClient,
a raw aiohttp session and the gateway's client (gateway/backends/http11.py), each doing the same
non-streamed /api/chat call with keep-alive.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import ollama
import orjson
import uvloop

from gateway.backends.http11 import Http11Client
from tests.support.ollama import running_ollama_double

MESSAGES = [{"role": "user", "content": "hi"}]
BODY = orjson.dumps({"model": "smollm2:135m", "messages": MESSAGES, "stream": False,
                     "options": {"num_predict": 16}})


async def measure(name: str, call: Callable[[], Awaitable[object]], n: int) -> None:
    for _ in range(100):
        await call()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await call()
    cpu = (time.process_time() - cpu0) / n * 1e6
    wall = (time.perf_counter() - wall0) / n * 1e6
    print(f"| {name:28s} | {cpu:8.0f} | {wall:8.0f} |")


async def run(url: str, n: int) -> None:
    official = ollama.AsyncClient(host=url, trust_env=False)
    raw_httpx = httpx.AsyncClient(base_url=url, trust_env=False)
    lean = Http11Client(url, connect_timeout_s=5, max_connections=8, headers={"content-type": "application/json"})
    async with aiohttp.ClientSession() as session:
        async def via_ollama() -> object:
            return await official.chat(model="smollm2:135m", messages=MESSAGES, options={"num_predict": 16})

        async def via_httpx() -> object:
            return orjson.loads((await raw_httpx.post("/api/chat", content=BODY)).content)

        async def via_aiohttp() -> object:
            async with session.post(url + "/api/chat", data=BODY) as r:
                return orjson.loads(await r.read())

        async def via_http11() -> object:  # the call the gateway's unary path makes (BackendHTTP.json)
            _, raw = await lean.fetch("POST", "/api/chat", BODY)
            return orjson.loads(raw)

        print("| client | CPU us/request | wall us/request |\n|---|---|---|")
        for name, call in (("ollama.AsyncClient (httpx)", via_ollama), ("httpx.AsyncClient", via_httpx),
                           ("aiohttp.ClientSession", via_aiohttp), ("gateway Http11Client", via_http11)):
            await measure(name, call, n)
    await raw_httpx.aclose()
    await lean.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500)
    args = parser.parse_args()
    with running_ollama_double(tokens=16) as double:
        uvloop.run(run(double.url, args.requests))  # the event loop the gateway runs on


if __name__ == "__main__":
    main()
