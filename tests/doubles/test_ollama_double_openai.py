"""The Ollama double's /v1 layer, driven by the real `openai` client."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

import ollama
from testkit.ollama import OllamaDoubleControl
from testkit.processes import Service
from tests.doubles.conftest import TOKENS
from tests.doubles.ollama_text import WORDS, count_prompt_tokens

MODEL = "smollm2:135m"
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture
def oai(double: Service, control: OllamaDoubleControl) -> openai.OpenAI:
    # Ollama ignores the key, but the client insists on one; no retries so faults are seen as sent
    return openai.OpenAI(base_url=f"{double.url}/v1", api_key="ollama", max_retries=0, timeout=10)


@pytest.fixture
def native(double: Service) -> ollama.Client:
    return ollama.Client(host=double.url, timeout=10)


def test_chat_completion_matches_the_native_answer(oai: openai.OpenAI, native: ollama.Client) -> None:
    reply = oai.chat.completions.create(model=MODEL, messages=QUESTION)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.system_fingerprint == "fp_ollama" and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert choice.message.content == native.chat(model=MODEL, messages=QUESTION).message.content
    assert reply.usage.completion_tokens == TOKENS
    assert reply.usage.prompt_tokens == count_prompt_tokens("user: Why is the sky blue?")
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + TOKENS


def test_chat_stream_with_usage_ends_with_a_usage_chunk(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True})
    )
    *tokens, finish, usage = chunks
    assert len(tokens) == TOKENS
    assert all(c.object == "chat.completion.chunk" and c.choices[0].finish_reason is None for c in tokens)
    assert all(c.choices[0].delta.content.strip() in WORDS for c in tokens)
    assert finish.choices[0].finish_reason == "stop"
    assert usage.choices == [] and usage.usage.completion_tokens == TOKENS
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_without_usage_and_raw_sse_framing(double: Service, control: OllamaDoubleControl) -> None:
    body = {"model": MODEL, "messages": QUESTION, "stream": True}
    with httpx.stream("POST", f"{double.url}/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[6:]) for e in events[:-1]]
    assert all("usage" not in p for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_gives_finish_reason_length(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    newer = oai.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=2)
    assert newer.usage.completion_tokens == 2


def test_response_format_json_object(oai: openai.OpenAI) -> None:
    reply = oai.chat.completions.create(model=MODEL, messages=QUESTION, response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_completions_stream_and_whole(oai: openai.OpenAI, native: ollama.Client) -> None:
    whole = oai.completions.create(model=MODEL, prompt="Once upon a time")
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    assert whole.choices[0].text == native.generate(model=MODEL, prompt="Once upon a time").response
    parts = list(
        oai.completions.create(
            model=MODEL, prompt="Once upon a time", stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(p.choices[0].text for p in parts if p.choices) == whole.choices[0].text
    assert parts[-1].usage.completion_tokens == TOKENS
    capped = oai.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 4


def test_embeddings_float_and_base64_agree_with_native(
    oai: openai.OpenAI, native: ollama.Client, control: OllamaDoubleControl
) -> None:
    default = oai.embeddings.create(model=MODEL, input=["sky", "grass"])  # the client asks for base64
    assert control.last_body("/v1/embeddings")["encoding_format"] == "base64"
    floats = oai.embeddings.create(model=MODEL, input="sky", encoding_format="float")
    expected = native.embed(model=MODEL, input="sky").embeddings[0]
    assert floats.data[0].embedding == pytest.approx(expected, abs=0)
    assert default.data[0].embedding == pytest.approx(expected, rel=1e-6)  # float32 round trip
    assert [d.index for d in default.data] == [0, 1]
    assert default.usage.prompt_tokens == count_prompt_tokens("sky") + count_prompt_tokens("grass")


def test_models_list_and_retrieve(oai: openai.OpenAI) -> None:
    ids = {m.id for m in oai.models.list()}
    assert ids == {"smollm2:135m", "llama3.2:1b"}
    assert oai.models.retrieve(MODEL).owned_by == "library"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nothing:here")


def test_unknown_model_and_bad_request_use_openais_error_shape(oai: openai.OpenAI, double: Service) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="nope:1b", messages=QUESTION)
    assert err.value.body["message"] == 'model "nope:1b" not found, try pulling it first'
    assert err.value.body["type"] == "not_found_error"
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model=MODEL, messages=[])
    raw = httpx.post(f"{double.url}/v1/completions", content=b"{oops")
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
