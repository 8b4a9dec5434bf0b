"""Usage through a real gateway: counts match the tokens the backend reported; access rules."""

from __future__ import annotations

import httpx
import openai
import pytest

from testkit.processes import wait_until
from tests.support.policy_stack import ADMIN_KEY, MODEL, PolicyStack, chat_body

PRICE = '{"input_per_million": 2.0, "output_per_million": 8.0}'


@pytest.fixture(scope="module")
def stack():
    s = PolicyStack.start(GATEWAY_PRICE_DEFAULT=PRICE, GATEWAY_GPU_MONTHLY_USD="300")
    yield s
    s.stop()


def usage(stack, key, **params) -> dict:
    response = httpx.get(f"{stack.url}/v1/usage", params=params, headers={"X-API-Key": key})
    assert response.status_code == 200, response.text
    return response.json()


def test_usage_matches_backend_reported_tokens(stack):
    key = stack.create_key()
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key)
    reported = []
    for i in range(3):
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"q{i} " * (i + 1)}], max_tokens=4 + i
        )
        reported.append((answer.usage.prompt_tokens, answer.usage.completion_tokens))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "streamed"}],
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    last = list(stream)[-1]
    reported.append((last.usage.prompt_tokens, last.usage.completion_tokens))
    # A stream whose client did not ask for usage is still counted (the gateway asks on its behalf).
    plain = httpx.post(
        f"{stack.url}/v1/chat/completions", json=chat_body(content="quiet", stream=True), headers={"X-API-Key": key}
    )
    assert '"usage"' not in plain.text
    want_in = sum(p for p, _ in reported)
    want_out = sum(c for _, c in reported)

    def counted() -> bool:
        return usage(stack, key)["totals"]["requests"] == 5

    wait_until(counted, timeout=5, what="usage recorded")
    body = usage(stack, key)
    assert body["totals"]["input_tokens"] > want_in and body["totals"]["output_tokens"] > want_out
    row = body["data"][0]
    assert row["model"] == MODEL and row["requests"] == 5
    # Without the unobserved stream the numbers are exactly what the backend reported.
    quiet_in, quiet_out = body["totals"]["input_tokens"] - want_in, body["totals"]["output_tokens"] - want_out
    assert 0 < quiet_in <= 8 and 0 < quiet_out <= 8
    cost = (body["totals"]["input_tokens"] * 2.0 + body["totals"]["output_tokens"] * 8.0) / 1e6
    assert body["totals"]["hosted_api_cost_usd"] == pytest.approx(cost)
    assert body["break_even"]["break_even_queries_per_month"] == pytest.approx(300 / (cost / 5))


def test_usage_visibility(stack):
    key_a, key_b = stack.create_key(name="a"), stack.create_key(name="b")
    assert (
        httpx.post(f"{stack.url}/v1/chat/completions", json=chat_body(), headers={"X-API-Key": key_b}).status_code
        == 200
    )
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    keys = httpx.get(f"{stack.url}/admin/keys", headers=admin).json()["data"]
    id_b = next(k["id"] for k in keys if k["name"] == "b")
    forbidden = httpx.get(f"{stack.url}/v1/usage", params={"key_id": id_b}, headers={"X-API-Key": key_a})
    assert forbidden.status_code == 403
    wait_until(
        lambda: (
            httpx.get(f"{stack.url}/v1/usage", params={"key_id": id_b}, headers=admin).json()["totals"]["requests"] == 1
        ),
        timeout=5,
        what="admin sees key b's usage",
    )
    assert usage(stack, key_a)["totals"]["requests"] == 0
    bad = httpx.get(f"{stack.url}/v1/usage", params={"start": "yesterday"}, headers={"X-API-Key": key_a})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "query.start"  # as any query parameter


def test_cost_metrics_exported(stack):
    key = stack.create_key()
    assert (
        httpx.post(f"{stack.url}/v1/chat/completions", json=chat_body(), headers={"X-API-Key": key}).status_code == 200
    )
    text = httpx.get(f"{stack.url}/metrics").text
    assert "gateway_gpu_monthly_cost_usd 300.0" in text
    cost = [
        line for line in text.splitlines() if line.startswith(f'gateway_hosted_api_cost_usd_total{{model="{MODEL}"}}')
    ]
    assert len(cost) == 1 and float(cost[0].rsplit(" ", 1)[1]) > 0


def test_policy_metrics_exist_before_traffic():
    stack = PolicyStack.start()
    try:
        text = httpx.get(f"{stack.url}/metrics").text
        for series in (
            f'gateway_cache_requests_total{{model="{MODEL}",result="hit"}} 0.0',
            f'gateway_hosted_api_cost_usd_total{{model="{MODEL}"}} 0.0',
            'gateway_rate_limited_total{kind="budget"} 0.0',
            'gateway_redis_errors_total{operation="rate_limit"} 0.0',
            "gateway_gpu_monthly_cost_usd 0.0",
        ):
            assert series in text, series
    finally:
        stack.stop()
