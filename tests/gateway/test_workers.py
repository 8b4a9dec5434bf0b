"""`GATEWAY_WORKERS=2`: two uvicorn worker processes behind one port, sharing Redis, and one `/metrics`
that counts every worker's requests whichever worker answers the scrape."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from testkit.processes import wait_until
from tests.support.policy_stack import PolicyStack, chat_body


@pytest.fixture(scope="module")
def stack():
    s = PolicyStack.start(GATEWAY_WORKERS="2")
    yield s
    s.stop()


def worker_pids(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def served(metrics: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("gateway_llm_requests_total{") and 'outcome="success"' in line
    )


def test_two_workers_serve_and_every_scrape_counts_both(stack) -> None:
    gateway = stack.gateways[0]
    assert len(worker_pids(gateway.proc.pid)) >= 2  # uvicorn's worker processes
    key = stack.create_key(rpm=1000)
    with httpx.Client(base_url=gateway.url, headers={"X-API-Key": key}, timeout=10) as client:
        for i in range(30):  # a new connection each: the kernel spreads them over both workers
            response = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json=chat_body(content=f"n{i}"),
                headers={"X-API-Key": key},
                timeout=10,
            )
            assert response.status_code == 200
        remaining = int(client.post("/v1/chat/completions", json=chat_body()).headers["X-RateLimit-Remaining"])
    assert remaining == 1000 - 31  # one limit in Redis, whichever worker counted
    # Each answer is counted just after it went out; then every scrape, whichever worker answers it,
    # sees all 31.
    wait_until(lambda: served(httpx.get(f"{gateway.url}/metrics").text) == 31, timeout=5, what="31 answers counted")
    for _ in range(6):
        assert served(httpx.get(f"{gateway.url}/metrics").text) == 31
