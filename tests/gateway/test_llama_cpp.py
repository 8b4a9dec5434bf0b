"""The real `openai` SDK through the gateway to llama.cpp serving SmolLM2 (a real model)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from testkit.llama import SMOLLM2_ALIAS
from testkit.processes import Service
from tests.support.gateway import ADMIN_KEY, running_gateway

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def llama_gateway(llama_server: Service) -> Iterator[Service]:
    with running_gateway([("openai", llama_server.url)]) as gw:
        yield gw


@pytest.fixture
def direct(llama_server: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama_server.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def client(llama_gateway: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=llama_gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)


def test_models_come_from_the_server(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [SMOLLM2_ALIAS]


def test_plain_chat_answers_like_the_server_itself(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    args = dict(model=SMOLLM2_ALIAS, messages=QUESTION, temperature=0, max_tokens=12, seed=1)
    via_gateway = client.chat.completions.create(**args)
    straight = direct.chat.completions.create(**args)
    assert via_gateway.choices[0].message.content == straight.choices[0].message.content
    assert "Paris" in via_gateway.choices[0].message.content
    assert via_gateway.usage.completion_tokens == straight.usage.completion_tokens > 0


def test_streamed_chat_equals_plain(client: openai.OpenAI) -> None:
    args = dict(model=SMOLLM2_ALIAS, messages=QUESTION, temperature=0, max_tokens=12, seed=1)
    plain = client.chat.completions.create(**args).choices[0].message.content
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


async def test_async_sdk_plain_and_streamed(llama_gateway: Service) -> None:
    client = openai.AsyncOpenAI(base_url=llama_gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
    args = dict(model=SMOLLM2_ALIAS, messages=QUESTION, temperature=0, max_tokens=8, seed=1)
    plain = (await client.chat.completions.create(**args)).choices[0].message.content
    stream = await client.chat.completions.create(**args, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == plain


def test_text_completion(client: openai.OpenAI, direct: openai.OpenAI) -> None:
    args = dict(model=SMOLLM2_ALIAS, prompt="The capital of France is", temperature=0, max_tokens=6, seed=1)
    assert client.completions.create(**args).choices[0].text == direct.completions.create(**args).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(**args, stream=True) if c.choices)
    assert streamed == direct.completions.create(**args).choices[0].text
