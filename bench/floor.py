"""What any proxy hop and any Redis round trip cost on this machine, before a line of gateway code.

    python -m bench.floor [--requests 1000] [--backend-ms 20]

Two measurements that bound issue 2's 1-client target from below:
- a trivial TCP forwarder (uvloop, bytes piped between the load generator and the mock, no HTTP
  parsing) in front of the mock that answers in `--backend-ms`, against the mock called directly;
- a Redis PING back to back and after `--backend-ms` of idleness (what the gateway's one Redis call
  per request meets when requests arrive one at a time).
On a VM, a process that slept pays for waking up; these numbers show how much.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import uvloop

from bench.point import SCENARIOS, kind_for, measure
from bench.stack import MockOptions, Target, direct_target, exit_cleanly_on_sigterm, start_mock
from tests.support.processes import Service, free_port, redis_service


class _Upstream(asyncio.Protocol):
    def __init__(self, downstream: asyncio.Transport) -> None:
        self.downstream = downstream

    def data_received(self, data: bytes) -> None:
        self.downstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.downstream.close()


class _Downstream(asyncio.Protocol):
    """One upstream connection per client connection; bytes piped both ways."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.upstream, _ = await loop.create_connection(lambda: _Upstream(self.transport), "127.0.0.1",
                                                        self.upstream_port)
        for data in self.pending:
            self.upstream.write(data)

    def data_received(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


def forward(port: int, upstream_port: int) -> None:
    """Run the forwarder (the `--forward` mode of this module, in its own process)."""
    async def serve() -> None:
        server = await asyncio.get_running_loop().create_server(lambda: _Downstream(upstream_port), "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(serve())


async def redis_rtt(port: int, idle_s: float, n: int = 300) -> tuple[float, float]:
    """p50 of PING in ms: back to back, and after `idle_s` of sleeping."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    results = []
    for gap in (0.0, idle_s):
        times = []
        for _ in range(n):
            if gap:
                await asyncio.sleep(gap)
            start = time.perf_counter()
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            await reader.readline()
            times.append((time.perf_counter() - start) * 1000)
        results.append(statistics.median(times))
    writer.close()
    return results[0], results[1]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--forward"]:
        forward(int(argv[1]), int(argv[2]))
        return
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--backend-ms", type=float, default=20.0)
    args = p.parse_args(argv)
    exit_cleanly_on_sigterm()
    opts = MockOptions(token_delay_ms=0.0, first_token_ms=args.backend_ms, plain_delay_ms=args.backend_ms)
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        mock = start_mock(stack, opts)
        port = free_port()
        forwarder = Service("forwarder", [sys.executable, "-m", "bench.floor", "--forward", str(port), str(mock.port)],
                            port).start().wait_port()
        stack.callback(forwarder.stop)
        redis = redis_service().start().wait_port()
        stack.callback(redis.stop)
        direct = direct_target(mock, path="/api/chat")
        via = Target(name="forwarder", port=port, processes={"forwarder": forwarder}, chat_path="/api/chat")
        p50 = {}
        for target in (direct, via):
            point = measure(target=target, kinds=[kind_for(SCENARIOS["plain"], target, opts.model)], scenario="plain",
                            concurrency=1, requests=args.requests, warmup=100, workdir=Path(tmp), mock_url=mock.url)
            p50[target.name] = point.p50_ms
        warm, cold = uvloop.run(redis_rtt(redis.port, args.backend_ms / 1000))
    print(f"| measurement (1 client, backend {args.backend_ms:g} ms) | ms |\n|---|---|")
    print(f"| trivial TCP forwarder, added p50 | {p50['forwarder'] - p50['direct']:.3f} |")
    print(f"| Redis PING p50, back to back | {warm:.3f} |")
    print(f"| Redis PING p50, after {args.backend_ms:g} ms idle | {cold:.3f} |")


if __name__ == "__main__":
    main()
