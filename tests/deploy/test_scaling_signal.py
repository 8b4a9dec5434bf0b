"""The PromQL the KEDA ScaledObject scales model servers on, run against a real Prometheus that scrapes a
real gateway under load: it reads 0 at rest, follows the requests running and waiting while a burst of
streams queues behind a replica's `max_concurrency`, and falls back to 0 when they ended."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from testkit.ollama import OllamaDoubleControl, running_ollama_double
from testkit.processes import Service, free_port, wait_until
from tests.deploy.chart import by_kind, render
from tests.support.gateway import ADMIN_KEY, running_gateway
from tests.support.prometheus import PrometheusAPI, prometheus_service, render_config, write_config

MODEL = "smollm2:135m"
BURST = 6


def scaled_object_query() -> str:
    (scaled,) = by_kind(render("--set", "keda.enabled=true", "--set", f"keda.model={MODEL}"), "ScaledObject")
    return scaled["spec"]["triggers"][0]["metadata"]["query"]


@pytest.fixture(scope="module")
def double() -> Iterator[Service]:
    with running_ollama_double(tokens=10) as service:
        yield service


@pytest.fixture(scope="module")
def gateway(double: Service) -> Iterator[Service]:
    backend = {"kind": "ollama", "url": double.url, "name": "ollama", "max_concurrency": 2}
    with running_gateway([backend], env={"GATEWAY_QUEUE_TIMEOUT_S": "60"}) as service:
        yield service


@pytest.fixture(scope="module")
def prometheus(gateway: Service, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusAPI]:
    port = free_port()
    config = render_config(gateway_targets=[f"127.0.0.1:{gateway.port}"], self_port=port, interval="1s")
    path = write_config(Path(tmp_path_factory.mktemp("prometheus")), config)
    service = prometheus_service(path, port).start().wait_http("/-/ready")
    try:
        yield PrometheusAPI(service.url)
    finally:
        service.stop()


def value(prometheus: PrometheusAPI, query: str) -> float | None:
    body = prometheus.query(query)
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_the_scaled_objects_query_moves_with_the_gateways_queue(double, gateway, prometheus) -> None:
    query = scaled_object_query()
    wait_until(
        lambda: any(t["health"] == "up" for t in prometheus.targets() if t["labels"]["job"] == "gateway"),
        timeout=30,
        what="Prometheus scraping the gateway",
    )
    assert value(prometheus, query) == 0.0, "the query should read 0 at rest (not be empty)"

    OllamaDoubleControl(double.url).set(token_delay=0.6)  # ~6 s a stream; the gateway holds the rest back
    ends: list[str] = []

    def stream() -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=90) as r:
            ends.append([line for line in r.iter_lines() if line][-1])

    threads = [threading.Thread(target=stream) for _ in range(BURST)]
    for t in threads:
        t.start()
    seen: list[float] = []

    def at_burst() -> bool:
        seen.append(value(prometheus, query) or 0.0)
        return seen[-1] == BURST

    wait_until(at_burst, timeout=15, what=f"the query reading {BURST} (2 running, {BURST - 2} waiting)")
    waiting = value(prometheus, f'sum(gateway_requests_waiting{{model="{MODEL}"}})')
    assert waiting == BURST - 2
    for t in threads:
        t.join(90)
    assert ends == ["data: [DONE]"] * BURST
    started = time.monotonic()
    wait_until(lambda: value(prometheus, query) == 0.0, timeout=15, what="the query back to 0")
    settled = time.monotonic() - started
    print(f"\nscaling query {query!r}: 0 at rest, {BURST} under the burst, 0 again {settled:.1f} s after")
