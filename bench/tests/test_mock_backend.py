"""The mock speaks both APIs faithfully enough for the real clients, with the configured shape."""

from __future__ import annotations

import httpx
import openai

import ollama
from bench.tests.conftest import TOKENS
from testkit.processes import Service


def test_openai_client_plain_and_stream(mock: Service) -> None:
    client = openai.OpenAI(base_url=f"{mock.url}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["bench-model"]
    done = client.chat.completions.create(model="bench-model", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content == "tok " * TOKENS
    assert done.usage.completion_tokens == TOKENS
    chunks = list(
        client.chat.completions.create(
            model="bench-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["tok "] * TOKENS
    assert chunks[-1].usage.completion_tokens == TOKENS


def test_ollama_client_plain_and_stream(mock: Service) -> None:
    client = ollama.Client(host=mock.url)
    assert [m.model for m in client.list().models] == ["bench-model"]
    reply = client.chat(model="bench-model", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert reply.message.content == "tok " * TOKENS and reply.done and reply.eval_count == TOKENS
    parts = list(client.chat(model="bench-model", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert [p.message.content for p in parts[:-1]] == ["tok "] * TOKENS
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_fail_marker_is_a_backend_error(mock: Service) -> None:
    body = {"model": "bench-model", "messages": [{"role": "user", "content": "BENCH_FAIL now"}]}
    for path in ("/v1/chat/completions", "/api/chat"):
        r = httpx.post(mock.url + path, json=body, timeout=5)
        assert r.status_code == 500 and "injected" in r.text


def test_unknown_path_and_bad_json(mock: Service) -> None:
    assert httpx.post(mock.url + "/v1/nope", json={}, timeout=5).status_code == 404
    assert httpx.post(mock.url + "/v1/chat/completions", content=b"{not json", timeout=5).status_code == 400


def test_stats_count_inference_calls_only(mock: Service) -> None:
    before = httpx.get(mock.url + "/_stats", timeout=5).json()["inference_calls"]
    body = {"model": "bench-model", "stream": False, "messages": [{"role": "user", "content": "x"}]}
    for path in ("/v1/chat/completions", "/api/chat", "/api/generate"):
        assert httpx.post(mock.url + path, json=body, timeout=5).status_code == 200
    httpx.get(mock.url + "/v1/models", timeout=5)
    assert httpx.get(mock.url + "/_stats", timeout=5).json()["inference_calls"] == before + 3
