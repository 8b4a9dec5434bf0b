"""What observability costs per request: the gateway with and without metrics, JSON access logs and tracing.

    python -m bench.observability_overhead [--requests 400] [--json out.json]

The gateway app runs in-process (httpx's ASGI transport, no socket on the client side) in front of
the Ollama double (a separate process); configurations are interleaved round by round so drift in
the machine's load hits them all alike. Reported: per-request latency p50/p99, and CPU time of this
process per request (gateway + client; the client's share is the same for every configuration),
each as a delta against the configuration with nothing on. Wall-clock latency here is dominated by
the double's own jitter; the CPU delta is the steadier measure of what instrumentation adds. "No metrics" swaps the metric objects for no-ops and
skips the HTTP instrumentator - the gateway always has metrics, this measures what they cost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import statistics
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import httpx
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from tqdm import tqdm

import gateway.app
from gateway.access_log import ACCESS_LOGGER, JsonFormatter
from gateway.settings import Settings
from tests.support.ollama import running_ollama_double

MODEL = "smollm2:135m"
KEY = "sk-bench-observability-0123456789"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


class DiscardingExporter(SpanExporter):
    """Spans go through the real SDK and batch processor, then nowhere (no collector here)."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class NullMetric:
    def labels(self, *args: Any, **kwargs: Any) -> "NullMetric":
        return self

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class NullMetrics:
    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def __getattr__(self, name: str) -> Any:
        if name.startswith("register_"):
            return lambda *args, **kwargs: None
        return NullMetric()


class NullInstrumentator:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def expose(self, app: Any, **kwargs: Any) -> "NullInstrumentator":
        return self


class NullHttpMetrics:
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def observe(self, **kwargs: Any) -> None:
        pass


@dataclass(frozen=True)
class Config:
    name: str
    metrics: bool
    access_log: bool
    tracing: bool


CONFIGS = (
    Config("nothing", metrics=False, access_log=False, tracing=False),
    Config("metrics", metrics=True, access_log=False, tracing=False),
    Config("metrics+log", metrics=True, access_log=True, tracing=False),
    Config("metrics+log+tracing", metrics=True, access_log=True, tracing=True),
)


@contextlib.contextmanager
def access_log(enabled: bool) -> Iterator[None]:
    """Access lines formatted as in production, written to memory (the cost is the formatting)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextlib.asynccontextmanager
async def gateway_client(config: Config, double_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(backends=[{"kind": "ollama", "url": double_url, "name": "ollama-a"}],
                        admin_key=KEY, discovery_interval_s=3600)
    patches = [] if config.metrics else [mock.patch.object(gateway.app, "GatewayMetrics", NullMetrics),
                                         mock.patch.object(gateway.app, "Instrumentator", NullInstrumentator),
                                         mock.patch.object(gateway.app, "HttpMetrics", NullHttpMetrics)]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        app = gateway.app.create_app(settings, span_exporter=DiscardingExporter() if config.tracing else None)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway",
                                     headers={"Authorization": f"Bearer {KEY}"}) as client:
            yield client


async def one_request(client: httpx.AsyncClient, stream: bool) -> float:
    start = time.perf_counter()
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    elapsed = time.perf_counter() - start
    if response.status_code != 200:
        raise RuntimeError(f"gateway answered {response.status_code}: {response.text[:200]}")
    return elapsed


async def measure(double_url: str, requests: int, rounds: int, stream: bool
                  ) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Wall seconds per request, and CPU seconds per request, for each configuration."""
    timings: dict[str, list[float]] = {c.name: [] for c in CONFIGS}
    cpu: dict[str, float] = {c.name: 0.0 for c in CONFIGS}
    per_round = max(1, requests // rounds)
    with tqdm(total=per_round * rounds * len(CONFIGS), desc=f"{'stream' if stream else 'unary'} requests") as bar:
        for _ in range(rounds):
            for config in CONFIGS:
                with access_log(config.access_log):
                    async with gateway_client(config, double_url) as client:
                        for _ in range(5):  # warm connections and code paths
                            await one_request(client, stream)
                        cpu_start = time.process_time()
                        for _ in range(per_round):
                            timings[config.name].append(await one_request(client, stream))
                            bar.update()
                        cpu[config.name] += time.process_time() - cpu_start
    return timings, {name: total / len(timings[name]) for name, total in cpu.items()}


def summarise(timings: dict[str, list[float]], cpu: dict[str, float]) -> list[dict[str, Any]]:
    floor = statistics.median(timings[CONFIGS[0].name])
    cpu_floor = cpu[CONFIGS[0].name]
    rows = []
    for name, values in timings.items():
        values = sorted(values)
        p50 = statistics.median(values)
        rows.append({"config": name, "requests": len(values), "p50_ms": round(p50 * 1e3, 3),
                     "p99_ms": round(values[int(0.99 * (len(values) - 1))] * 1e3, 3),
                     "p50_delta_us": round((p50 - floor) * 1e6, 1),
                     "cpu_us_per_request": round(cpu[name] * 1e6, 1),
                     "cpu_delta_us": round((cpu[name] - cpu_floor) * 1e6, 1)})
    return rows


def disabled_tracing_cost(iterations: int = 100_000) -> float:
    """Microseconds per request that tracing costs when off: the two no-op stage spans a request opens."""
    from gateway.tracing import DISABLED, backend_span, stage_span

    start = time.perf_counter()
    for _ in range(iterations):
        with stage_span(DISABLED.tracer, "auth"):
            pass
        with backend_span(DISABLED.tracer, operation="chat", model=MODEL, provider="ollama", backend="b"):
            pass
    return (time.perf_counter() - start) / iterations * 1e6


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="requests per configuration and mode")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with running_ollama_double(models=[MODEL], tokens=8) as double:
        for stream in (False, True):
            mode = "stream" if stream else "unary"
            results[mode] = summarise(*asyncio.run(measure(double.url, args.requests, args.rounds, stream)))
    for mode, rows in results.items():
        print(f"\n{mode}: latency through the gateway (in-process client, Ollama double backend)")
        print(f"{'config':<22}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'p50 +us':>9}{'cpu us/req':>12}{'cpu +us':>9}")
        for row in rows:
            print(f"{row['config']:<22}{row['requests']:>6}{row['p50_ms']:>9}{row['p99_ms']:>9}{row['p50_delta_us']:>9}"
                  f"{row['cpu_us_per_request']:>12}{row['cpu_delta_us']:>9}")
    results["disabled_tracing_us_per_request"] = round(disabled_tracing_cost(), 2)
    print(f"\ntracing off: {results['disabled_tracing_us_per_request']} us per request (no-op spans)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
