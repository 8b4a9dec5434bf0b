"""The gateway's Ollama backend (official `ollama` AsyncClient) against the Ollama API double,
driven by the real `openai` SDK: shapes, usage, streaming contract and pass-through options."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from testkit.ollama import OllamaDoubleControl
from testkit.processes import wait_until
from tests.gateway.conftest import MODEL
from tests.support.gateway import ADMIN_KEY
from tests.support.metrics import sample

HI = [{"role": "user", "content": "Say hi"}]


def test_chat_completion_matches_the_backend_answer(client: openai.OpenAI, control: OllamaDoubleControl) -> None:
    r = client.chat.completions.create(model=MODEL, messages=HI, temperature=0, max_tokens=5)
    assert r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert len(r.choices[0].message.content.split()) == 5
    assert r.choices[0].finish_reason == "length"
    sent = control.last_body("/api/chat")
    assert sent["options"]["num_predict"] == 5 and sent["options"]["temperature"] == 0
    assert sent["messages"] == [{"role": "user", "content": "Say hi"}]
    assert r.usage.completion_tokens == 5 and r.usage.prompt_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_chunks_done_and_usage(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=HI)
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=HI, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # the double is deterministic per prompt
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_stream_without_include_usage_has_no_usage_chunk(gateway) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": MODEL, "messages": HI, "stream": True},
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert not any('"usage"' in e for e in events)


async def test_async_client_plain_and_streamed(aclient: openai.AsyncOpenAI) -> None:
    r = await aclient.chat.completions.create(model=MODEL, messages=HI)
    stream = await aclient.chat.completions.create(model=MODEL, messages=HI, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == r.choices[0].message.content and text


def test_text_completion_plain_and_streamed(client: openai.OpenAI, control: OllamaDoubleControl) -> None:
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert r.object == "text_completion" and len(r.choices[0].text.split()) == 4
    assert control.last_body("/api/generate")["prompt"] == "Once upon a time"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True)
        if c.choices
    )
    assert streamed == r.choices[0].text


def test_embeddings(client: openai.OpenAI, control: OllamaDoubleControl) -> None:
    r = client.embeddings.create(model=MODEL, input=["alpha", "beta"])
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) > 1 and r.data[0].embedding != r.data[1].embedding
    assert control.last_body("/api/embed")["input"] == ["alpha", "beta"]
    assert r.usage.prompt_tokens > 0


def test_models_lists_what_the_backend_serves(client: openai.OpenAI, control: OllamaDoubleControl) -> None:
    served = {m["name"] for m in httpx.get(control.base_url + "/api/tags").json()["models"]}
    assert {m.id for m in client.models.list()} == served


def test_allowed_ollama_options_pass_through_with_the_openai_fields(
    client: openai.OpenAI, control: OllamaDoubleControl
) -> None:
    client.chat.completions.create(
        model=MODEL, messages=HI, seed=7, stop=["\n"], extra_body={"options": {"num_ctx": 4096, "top_k": 20}}
    )
    sent = control.last_body("/api/chat")
    assert sent["options"]["num_ctx"] == 4096 and sent["options"]["top_k"] == 20 and sent["options"]["seed"] == 7
    assert sent["options"]["stop"] == ["\n"] and "keep_alive" not in sent


def test_json_response_format_becomes_ollama_format(client: openai.OpenAI, control: OllamaDoubleControl) -> None:
    r = client.chat.completions.create(model=MODEL, messages=HI, response_format={"type": "json_object"})
    assert control.last_body("/api/chat")["format"] == "json"
    json.loads(r.choices[0].message.content)


def test_untagged_name_means_latest_not_any_tag(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="smollm2", messages=HI)  # only smollm2:135m exists


def test_client_disconnect_cancels_the_upstream_stream(gateway, control: OllamaDoubleControl) -> None:
    control.set(token_delay=0.2, tokens=50)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-ID": "hangs-up-1"}
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers=headers,
        json={"model": MODEL, "messages": HI, "stream": True},
    ) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # one chunk arrived, then we hang up
    wait_until(lambda: control.stats()["streams"]["aborted"] >= 1, timeout=5, what="upstream stream aborted")
    assert control.stats()["streams"]["completed"] == 0

    def access_line() -> dict | None:
        for line in gateway.logs().splitlines():
            if '"hangs-up-1"' in line and '"event": "request"' in line.replace('":"', '": "'):
                return json.loads(line)
        return None

    wait_until(lambda: access_line() is not None, timeout=5, what="access-log line of the abandoned stream")
    assert access_line()["status"] == 499, "a stream the client left is logged as nginx's 499"
    assert "Traceback" not in gateway.logs()


def test_in_flight_gauge_returns_to_zero(gateway, client: openai.OpenAI, control: OllamaDoubleControl) -> None:
    labels = {"model": MODEL, "backend": control.base_url.removeprefix("http://")}
    control.set(token_delay=0.3, tokens=20)
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": MODEL, "messages": HI, "stream": True},
    ) as r:
        lines = r.iter_lines()  # keep the iterator: dropping it closes the response
        assert next(lines).startswith("data: ")
        assert sample(gateway.url, "gateway_requests_in_flight", **labels) == 1
    control.set(token_delay=0, fail_next=1, fail_status=500)
    with pytest.raises(openai.APIError):
        client.chat.completions.create(model=MODEL, messages=HI)
    wait_until(
        lambda: sample(gateway.url, "gateway_requests_in_flight", **labels) == 0, timeout=5, what="in-flight back to 0"
    )
