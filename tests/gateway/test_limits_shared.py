"""RPM, TPM and monthly budgets held across two real gateway processes sharing one redis-server."""

from __future__ import annotations

import asyncio
import math

import httpx
import pytest

from tests.support.policy_stack import PolicyStack, chat_body


@pytest.fixture(scope="module")
def stack():
    s = PolicyStack.start(gateways=2)
    yield s
    s.stop()


def post(url: str, key: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=chat_body(), headers={"X-API-Key": key}, timeout=10)


async def test_rpm_is_one_limit_across_two_gateways(stack):
    key = stack.create_key(rpm=5)
    async with httpx.AsyncClient(timeout=10) as client:
        responses = await asyncio.gather(
            *[
                client.post(
                    f"{stack.gateways[i % 2].url}/v1/chat/completions", json=chat_body(), headers={"X-API-Key": key}
                )
                for i in range(12)
            ]
        )
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 5 + [429] * 7
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-RateLimit-Limit"] == "5" and refused.headers["X-RateLimit-Remaining"] == "0"
    served_by = {r.url.port for r in responses if r.status_code == 200}
    refused_by = {r.url.port for r in responses if r.status_code == 429}
    assert len(refused_by) == 2 and served_by  # both replicas refuse: the limit is shared
    ok = next(r for r in responses if r.status_code == 200)
    assert int(ok.headers["X-RateLimit-Remaining"]) < 5


def test_tpm_is_one_limit_across_two_gateways(stack):
    tpm = 100
    key = stack.create_key(tpm=tpm)
    statuses, used = [], []
    for i in range(30):
        response = post(stack.gateways[i % 2].url, key)
        statuses.append(response.status_code)
        if response.status_code != 200:
            break
        usage = response.json()["usage"]
        used.append(usage["prompt_tokens"] + usage["completion_tokens"])
    assert statuses[-1] == 429, statuses
    refused = post(stack.gateways[len(statuses) % 2].url, key)  # the other replica refuses too
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Limit-Tokens"] == str(tpm)
    assert int(refused.headers["Retry-After"]) >= 1
    estimate = math.ceil(len("hello") / 4) + 8
    # Admitted while (tokens counted so far + estimate) fits: counted is the real usage once
    # reconciled, the estimate until then; either way the count sits between these bounds.
    assert math.floor((tpm - estimate) / max(used)) + 1 <= len(used) <= math.floor(tpm / estimate)
    assert sum(used[:-1]) <= tpm


def test_monthly_budget_exhaustion(stack):
    key = stack.create_key(monthly_token_budget=30)
    statuses = [post(stack.gateways[i % 2].url, key).status_code for i in range(6)]
    assert statuses[0] == 200 and statuses[-1] == 429
    assert statuses.index(429) <= 3 and set(statuses[statuses.index(429) :]) == {429}
    refused = post(stack.url, key)
    assert refused.json()["error"]["code"] == "token_budget_exhausted"
    assert int(refused.headers["Retry-After"]) >= 1


def rpm_refusals_counted(stack: PolicyStack) -> float:
    text = "\n".join(httpx.get(f"{g.url}/metrics").text for g in stack.gateways)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('gateway_rate_limited_total{kind="rpm"}')
    )


def test_unlimited_key_is_not_limited_and_metrics_count_refusals(stack):
    key = stack.create_key()
    assert all(post(stack.url, key).status_code == 200 for _ in range(8))
    before = rpm_refusals_counted(stack)  # this test's own refusals: it does not rely on the ones before it
    limited = stack.create_key(rpm=1)
    statuses = [post(stack.gateways[i % 2].url, limited).status_code for i in range(4)]
    refusals = statuses.count(429)
    assert statuses[0] == 200 and refusals >= 2  # (a minute boundary mid-way may admit one more)
    assert rpm_refusals_counted(stack) - before == refusals


def test_token_endpoint_limited_per_address_across_gateways():
    stack = PolicyStack.start(gateways=2, GATEWAY_ANONYMOUS_RPM="3")
    try:
        key = stack.create_key()
        codes = [
            httpx.post(f"{stack.gateways[i % 2].url}/auth/token", headers={"X-API-Key": key}).status_code
            for i in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]
    finally:
        stack.stop()
