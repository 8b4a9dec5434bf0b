"""Redis killed, then restarted, under a running gateway: serving continues, /readyz says degraded,
a metric counts the failures, nothing hangs, and everything recovers without a gateway restart."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from testkit.processes import redis_service, wait_until
from tests.support.policy_stack import ADMIN_KEY, PolicyStack, chat_body


def durable(tmp_path) -> tuple[str, ...]:
    """AOF with fsync on every write, as compose runs Redis: keys survive a SIGKILL."""
    return ("--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp_path))


@pytest.fixture
def stack(tmp_path):
    # Key cache 0: every request looks its key up, so the outage path (stale cache) is exercised.
    s = PolicyStack.start(redis_extra=durable(tmp_path), GATEWAY_REDIS_TIMEOUT_S="0.2", GATEWAY_KEY_CACHE_S="0")
    yield s
    s.stop()


def chat(stack, key, **body) -> httpx.Response:
    started = time.monotonic()
    response = httpx.post(
        f"{stack.url}/v1/chat/completions", json=chat_body(**body), headers={"X-API-Key": key}, timeout=10
    )
    assert time.monotonic() - started < 2.0, "a request hung on Redis"
    return response


def redis_errors(stack) -> float:
    text = httpx.get(f"{stack.url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("gateway_redis_errors_total{")
    )


def test_redis_killed_then_restarted(stack, tmp_path):
    known = stack.create_key(rpm=1000)
    never_used = stack.create_key()
    assert chat(stack, known, temperature=0).status_code == 200
    assert httpx.get(f"{stack.url}/readyz").json()["status"] == "ready"
    port = stack.redis.port

    stack.redis.kill()
    for _ in range(5):
        response = chat(stack, known, temperature=0)
        assert response.status_code == 200 and response.headers["X-Cache"] == "BYPASS"
        assert response.headers["X-RateLimit-Limit"] == "1000"  # counted in-process meanwhile
    unknown = chat(stack, never_used)
    assert unknown.status_code == 503 and unknown.json()["error"]["code"] == "auth_store_unavailable"
    assert unknown.headers["Retry-After"]
    ready = httpx.get(f"{stack.url}/readyz")  # still serving: it stays in the load balancer
    assert ready.status_code == 200 and ready.json() == {"status": "degraded"}
    health = httpx.get(f"{stack.url}/admin/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert health.json()["status"] == "degraded" and health.json()["redis"]["up"] is False
    assert redis_errors(stack) >= 1
    admin = httpx.get(f"{stack.url}/admin/keys", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert admin.status_code == 503 and admin.json()["error"]["code"] == "redis_unavailable"

    stack.redis = redis_service(port, extra=durable(tmp_path)).start().wait_port()
    wait_until(
        lambda: httpx.get(f"{stack.url}/readyz").json()["status"] == "ready", timeout=10, what="readyz back to ready"
    )

    # Redis is used again: the cache stores and hits, new keys can be created and used.
    def cached() -> bool:
        return chat(stack, known, temperature=0, content="after recovery").headers["X-Cache"] == "HIT"

    wait_until(cached, timeout=10, what="cache in use again")
    fresh = stack.create_key()
    assert chat(stack, fresh).status_code == 200


def test_stalled_redis_does_not_hang_requests(stack):
    """A SIGSTOPped Redis accepts connections but never answers: only timeouts save us."""
    key = stack.create_key()
    assert chat(stack, key).status_code == 200
    os.kill(stack.redis.proc.pid, signal.SIGSTOP)
    try:
        for i in range(4):
            assert chat(stack, key, temperature=0, content=f"stalled {i}").status_code == 200
        started = time.monotonic()
        assert httpx.get(f"{stack.url}/readyz", timeout=5).json()["status"] == "degraded"
        assert time.monotonic() - started < 2.0
    finally:
        os.kill(stack.redis.proc.pid, signal.SIGCONT)
    wait_until(
        lambda: httpx.get(f"{stack.url}/readyz").json()["status"] == "ready", timeout=10, what="readyz back to ready"
    )


def test_without_redis_url_everything_runs_in_process():
    stack = PolicyStack.start(with_redis=False)
    try:
        key = stack.create_key(rpm=2)
        first = chat(stack, key, temperature=0)
        assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
        wait_until(lambda: chat(stack, key, temperature=0).status_code == 429, timeout=5, what="rpm in-process")
        health = httpx.get(f"{stack.url}/admin/health", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        assert health["status"] == "ready" and health["redis"]["configured"] is False
    finally:
        stack.stop()
