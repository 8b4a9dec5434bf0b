"""A replica with `max_concurrency` takes no more requests than that at once: the rest wait in the gateway,
where gateway_requests_waiting counts them (the autoscaling signal), and past the queue timeout get a 503
that says every replica is busy. A real gateway process in front of the Ollama double."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import httpx
import pytest

from testkit.ollama import running_ollama_double
from testkit.processes import Service, wait_until
from tests.support.gateway import ADMIN_KEY, running_gateway

MODEL = "smollm2:135m"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def double() -> Iterator[Service]:
    with running_ollama_double(tokens=10) as service:
        yield service


@pytest.fixture(scope="module")
def gateway(double: Service) -> Iterator[Service]:
    backend = {"kind": "ollama", "url": double.url, "name": "ollama", "max_concurrency": 1}
    with running_gateway([backend], env={"GATEWAY_QUEUE_TIMEOUT_S": "3"}) as service:
        yield service


def waiting(gateway: Service) -> float:
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    found = re.search(r'^gateway_requests_waiting\{model="smollm2:135m"\} (\S+)$', metrics, re.M)
    return float(found.group(1)) if found else 0.0


def stream_to_end(gateway: Service, out: list[str]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30) as r:
        out.append([line for line in r.iter_lines() if line][-1] if r.status_code == 200 else str(r.status_code))


def test_requests_over_a_replicas_limit_wait_in_the_gateway_and_are_counted(gateway, control) -> None:
    control.set(token_delay=0.08)  # ~0.8 s a stream
    ends: list[str] = []
    threads = [threading.Thread(target=stream_to_end, args=(gateway, ends)) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: waiting(gateway) == 2.0, timeout=5, what="two requests waiting")
    for t in threads:
        t.join(30)
    assert ends == ["data: [DONE]"] * 3
    assert control.stats()["max_inflight"] == 1
    assert waiting(gateway) == 0.0


def test_a_request_that_waits_past_the_queue_timeout_is_told_every_replica_is_busy(gateway, control) -> None:
    control.set(token_delay=0.6)  # ~6 s: longer than the queue timeout
    ends: list[str] = []
    long = threading.Thread(target=stream_to_end, args=(gateway, ends))
    long.start()
    wait_until(lambda: control.stats()["inflight"] == 1, timeout=5, what="the long stream running")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    busy = httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "replicas_busy"
    assert int(busy.headers["Retry-After"]) >= 1
    long.join(30)
    assert ends == ["data: [DONE]"]
