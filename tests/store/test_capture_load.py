"""Capture under load: 50 concurrent clients through a real gateway with capture on, while the real
Postgres behind it is stopped and started again. No client error, drops counted while it is down,
capture resuming by itself. Prints the numbers (per phase latency, drops) for the notes."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from testkit.processes import Service, wait_until
from tests.store.support import ADMIN, MODEL, inference_rows
from tests.support.gateway import running_gateway
from tests.support.metrics import sample
from tests.support.postgres import Postgres, running_postgres

CLIENTS = 50
PHASE_S = 4.0


@pytest.fixture
def own_postgres() -> Iterator[Postgres]:
    """Its own server: this test stops it."""
    with running_postgres() as pg:
        yield pg


async def client_loop(
    client: httpx.AsyncClient,
    phase: list[str],
    latencies: dict[str, list[float]],
    errors: list[str],
    stop: asyncio.Event,
    n: int,
) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"client {n}"}], "max_tokens": 8}
    while not stop.is_set():
        started = time.perf_counter()
        try:
            response = await client.post("/v1/chat/completions", json=body)
            if response.status_code != 200:
                errors.append(f"{response.status_code} {response.text[:100]}")
        except httpx.HTTPError as exc:
            errors.append(repr(exc))
        latencies.setdefault(phase[0], []).append(time.perf_counter() - started)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


async def test_fifty_clients_while_postgres_goes_down_and_comes_back(double: Service, own_postgres: Postgres) -> None:
    url = own_postgres.url
    env = {
        "DATABASE_URL": url,
        "GATEWAY_CAPTURE_PERCENT": "100",
        "GATEWAY_CAPTURE_QUEUE": "100",
        "GATEWAY_CAPTURE_RETRY_S": "0.2",
        "GATEWAY_CACHE_ENABLED": "false",
        "GATEWAY_LOG_LEVEL": "warning",
    }
    with running_gateway([("ollama", double.url)], env=env) as gateway:
        phase, latencies, errors, stop = ["up"], {}, [], asyncio.Event()
        limits = httpx.Limits(max_connections=CLIENTS)
        async with httpx.AsyncClient(base_url=gateway.url, headers=ADMIN, timeout=30, limits=limits) as client:
            tasks = [
                asyncio.create_task(client_loop(client, phase, latencies, errors, stop, n)) for n in range(CLIENTS)
            ]
            await asyncio.sleep(PHASE_S)
            phase[0] = "down"
            await asyncio.to_thread(own_postgres.stop)
            await asyncio.sleep(PHASE_S)
            dropped_while_down = sample(gateway.url, "gateway_capture_dropped_total", reason="queue_full")
            phase[0] = "restarted"
            restarted_at = datetime.now(UTC)
            await asyncio.to_thread(own_postgres.start)
            await asyncio.sleep(PHASE_S)
            stop.set()
            await asyncio.gather(*tasks)
        wait_until(lambda: sample(gateway.url, "gateway_capture_queue") == 0, timeout=30, what="queue drained")
        written = sample(gateway.url, "gateway_capture_written_total")
        dropped = sample(gateway.url, "gateway_capture_dropped_total", reason="queue_full")
    rows = await asyncio.to_thread(inference_rows, url)
    after = [r for r in rows if r["created_at"] >= restarted_at]
    counts = {k: len(v) for k, v in latencies.items()}
    print(
        f"\ncapture under load: {CLIENTS} clients, requests {counts}, errors {len(errors)}, "
        + ", ".join(
            f"{k} p50 {statistics.median(v) * 1000:.1f} ms p95 {p95(v) * 1000:.1f} ms" for k, v in latencies.items()
        )
        + f"; written {written:.0f}, dropped {dropped:.0f} (while down {dropped_while_down:.0f}), "
        f"rows {len(rows)}, after restart {len(after)}"
    )
    assert errors == [], errors[:5]
    assert dropped_while_down and dropped_while_down > 0, "an outage longer than the queue drops, counted"
    assert after, "capture resumed by itself after the restart"
    assert len(rows) == written and written + dropped == sum(counts.values())
    assert p95(latencies["down"]) < 3 * p95(latencies["up"]) + 0.05, "the outage slowed clients down"
