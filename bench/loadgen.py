"""Closed-loop load generator: N clients on keep-alive connections, a fixed request count.

Runs as its own process (so its CPU is not the server's) and speaks raw HTTP/1.1 over asyncio
streams: a request costs it far less than what it measures (its CPU is in every report). Input is a
JSON spec, output a JSON file of per-request columns (kind, status, latency, time to first
token, content chunks, mean gap between chunks) plus its own wall and CPU time.

    python -m bench.loadgen spec.json result.json

A request body may hold `{n}`: it becomes a number unique to the request (a cache miss);
a body without it repeats exactly (a cache hit after the first). With `progress_every` set it
prints `progress <done>` lines on stdout so a caller can sample the servers as it goes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import CpuSnapshot

# A streamed event that carries text: OpenAI SSE deltas, Ollama chat and generate lines.
CONTENT = re.compile(rb'"(?:content|response)":\s*"[^"]')
REQUEST_TIMEOUT_S = 120.0


@dataclass(frozen=True, kw_only=True)
class RequestKind:
    """One kind of request in the mix."""

    name: str
    path: str
    body: str
    stream: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    weight: int = 1


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    host: str
    port: int
    concurrency: int
    requests: int
    kinds: list[RequestKind]
    warmup: int = 0
    progress_every: int = 0
    seed: int = 7
    watch_pids: dict[str, int] = field(default_factory=dict)  # servers whose CPU to report

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoadSpec:
        kinds = [RequestKind(**k) for k in data.pop("kinds")]
        return cls(kinds=kinds, **data)


@dataclass
class Results:
    kind: list[str] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    chunks: list[int] = field(default_factory=list)
    gap: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


class Connection:
    """One keep-alive HTTP/1.1 connection, reopened after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes, stream: bool) -> tuple[int, float, float, int, float]:
        """Send one request; return (status, latency, ttft, content chunks, mean chunk gap)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        t0 = time.perf_counter()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        headers = head.lower()
        chunks, arrivals = 0, []
        if b"transfer-encoding: chunked" in headers:
            while True:
                size = int((await self.reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                if stream:
                    found = len(CONTENT.findall(data))
                    if found:
                        chunks += found
                        arrivals.append(time.perf_counter())
        else:
            match = re.search(rb"content-length:\s*(\d+)", headers)
            if match:
                await self.reader.readexactly(int(match.group(1)))
            else:  # body runs to the end of the connection
                await self.reader.read()
                self.close()
        end = time.perf_counter()
        if b"connection: close" in headers:
            self.close()
        ttft = (arrivals[0] - t0) if arrivals else (end - t0)
        gap = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1) if len(arrivals) > 1 else 0.0
        return status, end - t0, ttft, chunks, gap

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _templates(spec: LoadSpec) -> list[tuple[RequestKind, bytes, str]]:
    """Per kind: the request head up to Content-Length, and the body template."""
    out = []
    for kind in spec.kinds:
        extra = "".join(f"{k}: {v}\r\n" for k, v in kind.headers.items())
        head = (
            f"POST {kind.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
            f"Content-Type: application/json\r\nAccept: */*\r\n{extra}"
        ).encode()
        out.append((kind, head, kind.body))
    return out


def _schedule(spec: LoadSpec) -> list[int]:
    """Which kind each request is: the weights as a shuffled cycle, the same every run."""
    cycle = [i for i, k in enumerate(spec.kinds) for _ in range(k.weight)]
    random.Random(spec.seed).shuffle(cycle)
    return cycle


async def run(spec: LoadSpec) -> tuple[Results, float, float, dict[str, float]]:
    """Warm up, then send `spec.requests` requests (one continuous run; see the end).

    Returns the results, wall and own CPU seconds of the measured phase, and the CPU seconds
    each watched server spent in exactly that phase (read here, where its edges are known)."""
    templates, cycle = _templates(spec), _schedule(spec)
    results = Results()
    unique = itertools.count(int(time.time() * 1000) % 10**9 * 1000)
    conns = [Connection(spec.host, spec.port) for _ in range(spec.concurrency)]

    window: list[tuple[float, float, CpuSnapshot]] = []  # (clock, own CPU, servers' CPU) when measuring began

    def measuring_starts() -> None:
        window.append((time.perf_counter(), _cpu(), CpuSnapshot.take(spec.watch_pids)))

    async def client(conn: Connection, counter: itertools.count, last: int) -> None:
        while (i := next(counter)) < last:
            record = i >= spec.warmup
            if i == spec.warmup:
                measuring_starts()
            kind, head, body = templates[cycle[i % len(cycle)]]
            payload = body.replace("{n}", str(next(unique))).encode() if "{n}" in body else body.encode()
            raw = head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    outcome = await conn.request(raw, kind.stream)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError) as exc:
                conn.close()
                outcome = (0, float("nan"), float("nan"), 0, 0.0)
                if record:
                    name = type(exc).__name__
                    results.errors[name] = results.errors.get(name, 0) + 1
            if record:
                _record(results, kind.name, outcome, spec.progress_every)

    # Warm-up and measurement are one run on the same connections, with no barrier between them:
    # a barrier would start all clients at the same instant, and that synchronised burst (not the
    # steady load asked for) took the first few hundred measured requests to smooth out. Timing and
    # CPU start when the first measured request is taken.
    counter = itertools.count(0)
    await asyncio.gather(*(client(c, counter, spec.warmup + spec.requests) for c in conns))
    t0, cpu0, servers0 = window[0]
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    servers = CpuSnapshot.take(spec.watch_pids).since(servers0)
    for c in conns:
        c.close()
    return results, wall, cpu, servers


def _record(results: Results, kind: str, outcome: tuple[int, float, float, int, float], progress_every: int) -> None:
    status, lat, ttft, chunks, gap = outcome
    results.kind.append(kind)
    results.status.append(status)
    results.latency.append(lat)
    results.ttft.append(ttft)
    results.chunks.append(chunks)
    results.gap.append(gap)
    if progress_every and len(results.kind) % progress_every == 0:
        print(f"progress {len(results.kind)}", flush=True)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> None:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        sys.exit("usage: python -m bench.loadgen SPEC.json RESULT.json")
    try:
        spec = LoadSpec.from_json(json.loads(Path(args[0]).read_text()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        sys.exit(f"bad load spec {args[0]}: {type(exc).__name__}: {exc}")
    if spec.concurrency < 1 or spec.requests < 1 or not spec.kinds:
        sys.exit("load spec needs concurrency >= 1, requests >= 1 and at least one kind")
    from testkit.mock_backend import install_fast_loop

    install_fast_loop()
    results, wall, cpu, servers = asyncio.run(run(spec))
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(args[1]).write_text(
        json.dumps({"wall_s": wall, "cpu_s": cpu, "server_cpu_s": servers, "maxrss_kb": maxrss_kb, **results.__dict__})
    )


if __name__ == "__main__":
    main()
