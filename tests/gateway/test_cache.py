"""Cache key, policy, Redis storage, SSE replay and stream assembly."""

from __future__ import annotations

import orjson
import pytest

from gateway.access.cache import ResponseCache, cache_key, decide
from gateway.protocol.assembly import StreamAssembler, replay_sse
from gateway.state.redis import RedisState
from gateway.state.write_behind import WriteBehind

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 8}
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "tiny",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.1},
        {"top_p": 0.5},
        {"seed": 1},
        {"max_tokens": 9},
        {"stop": ["x"]},
        {"tools": [{"type": "function"}]},
        {"response_format": {"type": "json_object"}},
        {"n": 2},
        {"messages": [{"role": "user", "content": "hi!"}]},
        {"user": "u2"},
        {"presence_penalty": 1},
        {"logit_bias": {"1": 2}},
    ],
)
def test_every_field_changes_the_key(change):
    assert cache_key("chat", "tiny@sha256:a", BODY) != cache_key("chat", "tiny@sha256:a", {**BODY, **change})


def test_key_ignores_framing_and_equivalent_spellings_but_not_model_version():
    base = cache_key("chat", "tiny@sha256:a", BODY)
    assert base == cache_key(
        "chat", "tiny@sha256:a", {**BODY, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert base == cache_key("chat", "tiny@sha256:a", {**BODY, "temperature": 0.0, "top_k": None})
    assert base == cache_key("chat", "tiny@sha256:a", {**BODY, "model": "alias-of-tiny"})
    assert base != cache_key("chat", "tiny@sha256:b", BODY)
    assert base != cache_key("completions", "tiny@sha256:a", BODY)


def test_policy():
    assert decide(BODY, None, None).read and decide(BODY, None, None).write
    assert decide({**BODY, "temperature": 0.7}, None, None).bypass
    assert decide({"model": "m"}, None, None).bypass  # default temperature is 1
    assert not decide({**BODY, "temperature": 0.7, "seed": 3}, None, None).bypass
    assert not decide({**BODY, "temperature": 0.7}, None, "on").bypass
    assert decide(BODY, None, "off").bypass
    no_cache = decide(BODY, "no-cache", None)
    assert not no_cache.read and no_cache.write
    no_store = decide(BODY, "max-age=0, no-store", None)
    assert no_store.read and not no_store.write


async def test_redis_store_round_trip_ttl_and_size_cap(redis_server):
    state = RedisState.from_url(f"redis://127.0.0.1:{redis_server.port}/0")
    cache = ResponseCache(state, ttl_s=120, max_entry_bytes=2048)
    key = cache_key("chat", "tiny", BODY)
    writes = WriteBehind(state, [cache])
    try:
        assert await cache.read(key) is None
        assert cache.store(key, ANSWER)
        await writes.flush()
        assert orjson.loads(await cache.read(key)) == ANSWER
        assert 0 < await state.client.ttl(key) <= 120
        big = {**ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 4096}}]}
        assert not cache.store(cache_key("chat", "tiny", {**BODY, "seed": 9}), big)
        await writes.flush()
        assert await cache.read(cache_key("chat", "tiny", {**BODY, "seed": 9})) is None
    finally:
        await state.close()


async def test_memory_store_is_bounded_in_entries_and_bytes():
    cache = ResponseCache(RedisState(None), memory_entries=3)
    keys = [cache_key("chat", "tiny", {**BODY, "seed": i}) for i in range(5)]
    for k in keys:
        cache.store(k, ANSWER)
    assert [await cache.read(k) is not None for k in keys] == [False, False, True, True, True]
    size = len(orjson.dumps(ANSWER))
    by_bytes = ResponseCache(RedisState(None), memory_entries=100, memory_bytes=2 * size)
    for k in keys:
        by_bytes.store(k, ANSWER)
        by_bytes.store(k, ANSWER)  # overwriting must not count twice
    assert [await by_bytes.read(k) is not None for k in keys] == [False, False, False, True, True]


def parse_sse(frames: list[bytes]) -> list:
    body = b"".join(frames).decode()
    assert body.endswith("data: [DONE]\n\n")
    return [orjson.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: {")]


def test_replay_then_assemble_gives_back_the_answer():
    chunks = parse_sse(list(replay_sse(ANSWER, include_usage=True)))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "Hello there"
    assembler = StreamAssembler()
    for c in chunks:
        assembler.add(c)
    assert assembler.complete and assembler.response() == ANSWER


def test_cut_or_failed_stream_is_not_complete():
    chunks = parse_sse(list(replay_sse(ANSWER)))
    cut = StreamAssembler()
    for c in chunks[:-1]:  # the finish_reason chunk never arrived
        cut.add(c)
    assert not cut.complete
    failed = StreamAssembler()
    for c in chunks:
        failed.add(c)
    failed.add({"error": {"message": "backend died", "type": "server_error"}})
    assert not failed.complete


def test_text_completion_replay():
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "tiny",
        "choices": [{"index": 0, "text": "abc", "logprobs": None, "finish_reason": "length"}],
    }
    chunks = parse_sse(list(replay_sse(answer)))
    assembler = StreamAssembler()
    for c in chunks:
        assembler.add(c)
    assert assembler.complete and assembler.response() == answer
