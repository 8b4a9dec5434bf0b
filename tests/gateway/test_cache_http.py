"""The response cache through a real gateway, Ollama double and redis-server: HIT/MISS/BYPASS,
cached stream replay with the real `openai` client, and no caching of failed or cut streams."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest

from testkit.ollama import OllamaDoubleControl
from testkit.processes import wait_until
from tests.support.policy_stack import MODEL, PolicyStack, chat_body


@pytest.fixture(scope="module")
def stack():
    s = PolicyStack.start()
    yield s
    s.stop()


@pytest.fixture
def control(stack):
    ctl = OllamaDoubleControl(stack.double.url)
    ctl.reset()
    yield ctl
    ctl.reset()


@pytest.fixture(scope="module")
def key(stack):
    return stack.create_key()


def chat(stack, key, headers=None, **body) -> httpx.Response:
    return httpx.post(
        f"{stack.url}/v1/chat/completions",
        json=chat_body(**body),
        headers={"X-API-Key": key, **(headers or {})},
        timeout=10,
    )


def backend_calls(control) -> int:
    return control.calls("/api/chat")


def wait_cached(stack, key, headers=None, **body) -> httpx.Response:
    """Stores happen just after the response; poll until the next identical request hits."""
    found = {}

    def hit() -> bool:
        found["r"] = chat(stack, key, headers, **body)
        return found["r"].headers["X-Cache"] == "HIT"

    wait_until(hit, timeout=5, what="cache store")
    return found["r"]


def test_miss_then_hit_without_a_backend_call(stack, key, control):
    first = chat(stack, key, temperature=0, content="cache me")
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
    second = wait_cached(stack, key, temperature=0, content="cache me")
    calls = backend_calls(control)
    third = chat(stack, key, temperature=0, content="cache me")
    assert third.headers["X-Cache"] == "HIT" and backend_calls(control) == calls == 1
    assert second.json()["choices"] == first.json()["choices"] == third.json()["choices"]
    # Any change of the request is another entry.
    assert chat(stack, key, temperature=0, content="cache me", max_tokens=3).headers["X-Cache"] == "MISS"
    assert chat(stack, key, temperature=0, content="cache me", model="llama3.2:1b").headers["X-Cache"] == "MISS"


def test_nondeterministic_requests_bypass_unless_opted_in(stack, key, control):
    assert chat(stack, key, temperature=0.8, content="creative").headers["X-Cache"] == "BYPASS"
    assert chat(stack, key, content="no temperature given").headers["X-Cache"] == "BYPASS"
    assert chat(stack, key, temperature=0.8, content="creative").headers["X-Cache"] == "BYPASS"
    assert backend_calls(control) == 3
    opted = {"X-Gateway-Cache": "on"}
    assert chat(stack, key, opted, temperature=0.8, content="opted in").headers["X-Cache"] == "MISS"
    assert wait_cached(stack, key, opted, temperature=0.8, content="opted in").json()["choices"]
    assert chat(stack, key, temperature=0.8, content="opted in").headers["X-Cache"] == "BYPASS"
    seeded = chat(stack, key, temperature=0.8, seed=7, content="seeded")
    assert seeded.headers["X-Cache"] == "MISS"


def test_cache_control_no_cache_and_no_store(stack, key, control):
    chat(stack, key, temperature=0, content="directives")
    wait_cached(stack, key, temperature=0, content="directives")
    skipped = chat(stack, key, {"Cache-Control": "no-cache"}, temperature=0, content="directives")
    assert skipped.headers["X-Cache"] == "MISS"
    not_stored = chat(stack, key, {"Cache-Control": "no-store"}, temperature=0, content="never stored")
    assert not_stored.headers["X-Cache"] == "MISS"
    again = chat(stack, key, {"Cache-Control": "no-store"}, temperature=0, content="never stored")
    assert again.headers["X-Cache"] == "MISS"


def sse_events(response: httpx.Response) -> list:
    lines = [line for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [orjson.loads(line[6:]) for line in lines[:-1]]


def test_cached_answer_replays_as_a_stream_for_the_openai_client(stack, key, control):
    unary = chat(stack, key, temperature=0, content="stream me later")
    wait_cached(stack, key, temperature=0, content="stream me later")
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=key)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "stream me later"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert raw.headers["X-Cache"] == "HIT"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.json()["choices"][0]["message"]["content"]
    assert chunks[-1].usage.completion_tokens == unary.json()["usage"]["completion_tokens"]
    assert backend_calls(control) == 1


def test_streamed_miss_is_stored_whole_and_served_to_unary(stack, key, control):
    streamed = chat(stack, key, temperature=0, content="streamed first", stream=True)
    assert streamed.headers["X-Cache"] == "MISS"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_events(streamed) if e["choices"])
    assert all(e["choices"] for e in sse_events(streamed))  # usage chunk not asked for: not sent
    hit = wait_cached(stack, key, temperature=0, content="streamed first")
    assert hit.json()["choices"][0]["message"]["content"] == text
    assert hit.json()["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("fault", ["error_line_next", "die_mid_stream_next"])
def test_failed_or_cut_stream_is_never_cached(stack, key, control, fault):
    control.set(**{fault: 1, "die_after_tokens": 2})
    broken = chat(stack, key, temperature=0, content=f"broken by {fault}", stream=True)
    assert broken.status_code == 200 and "[DONE]" not in broken.text and '"error"' in broken.text
    # A later identical request must reach the backend: nothing was stored.
    retry = chat(stack, key, temperature=0, content=f"broken by {fault}")
    assert retry.status_code == 200 and retry.headers["X-Cache"] == "MISS"
    assert backend_calls(control) == 2


def test_failed_unary_answer_is_not_cached(stack, key, control):
    control.set(fail_next=1, fail_status=400)
    failed = chat(stack, key, temperature=0, content="fails once")
    assert failed.status_code == 400 and failed.headers.get("X-Cache") is None
    ok = chat(stack, key, temperature=0, content="fails once")
    assert ok.status_code == 200 and ok.headers["X-Cache"] == "MISS"


def cache_counts(stack) -> dict[str, float]:
    text = httpx.get(f"{stack.url}/metrics").text
    return {
        result: sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("gateway_cache_requests_total{") and f'result="{result}"' in line
        )
        for result in ("hit", "miss", "bypass")
    }


def test_cache_metrics(stack, key):
    before = cache_counts(stack)
    chat(stack, key, temperature=0, content="metrics")
    wait_cached(stack, key, temperature=0, content="metrics")
    chat(stack, key, temperature=0.5, content="metrics")
    after = cache_counts(stack)
    assert after["miss"] - before["miss"] >= 1 and after["hit"] - before["hit"] >= 1
    assert after["bypass"] - before["bypass"] == 1


def test_embeddings_are_cached_without_temperature(stack, key, control):
    body = {"model": MODEL, "input": ["embed me"]}
    headers = {"X-API-Key": key}
    first = httpx.post(f"{stack.url}/v1/embeddings", json=body, headers=headers)
    assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"

    def hit() -> bool:
        again = httpx.post(f"{stack.url}/v1/embeddings", json=body, headers=headers)
        return again.headers["X-Cache"] == "HIT" and again.json()["data"] == first.json()["data"]

    wait_until(hit, timeout=5, what="embedding cached")
    assert control.calls("/api/embed") == 1


def test_an_answer_stored_by_one_replica_is_a_hit_on_another_50ms_later():
    """Replicas share one cache: the store happens right after the answer went out, before the
    client's repeat (50 ms later, at the other replica) arrives."""
    two = PolicyStack.start(gateways=2)
    try:
        key = two.create_key()
        control = OllamaDoubleControl(two.double.url)
        control.reset()
        body = chat_body(temperature=0, content="shared across replicas")
        headers = {"X-API-Key": key}
        first = httpx.post(f"{two.gateways[0].url}/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert first.status_code == 200 and first.headers["X-Cache"] == "MISS"
        time.sleep(0.05)  # the repeat's timing is what this test is about, not a wait for readiness
        second = httpx.post(f"{two.gateways[1].url}/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert second.status_code == 200 and second.headers["X-Cache"] == "HIT"
        assert second.json()["choices"] == first.json()["choices"]
        assert control.calls("/api/chat") == 1
    finally:
        two.stop()
