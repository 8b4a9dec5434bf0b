"""Streams arrive in batches (what one socket read carried); nothing is lost or reordered by batching,
and a failure in the middle of a batch still delivers the chunks before it."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from gateway.backends.ollama import OllamaBackend
from gateway.backends.openai_compat import OpenAICompatBackend
from gateway.errors import BackendTimeout, BackendUnavailable
from gateway.protocol.requests import ChatCompletionRequest
from gateway.settings import BackendSpec, Settings
from tests.support.raw_server import read_request, server

REQ = ChatCompletionRequest.model_validate(
    {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
)


def chunked(*writes: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(w), w) for w in writes)


def ndjson(*parts: dict) -> bytes:
    return b"".join(orjson.dumps(p) + b"\n" for p in parts)


def replying(*bodies: bytes, gap_s: float = 0.0):
    """A backend that answers one request with a chunked body written in `bodies` (one TCP write each)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for body in bodies:
            writer.write(chunked(body))
            await writer.drain()
            await asyncio.sleep(gap_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    return handler


TOKENS = [{"model": "m", "message": {"role": "assistant", "content": t}, "done": False} for t in ("a", "b", "c")]
DONE = {
    "model": "m",
    "message": {"role": "assistant", "content": ""},
    "done": True,
    "done_reason": "stop",
    "prompt_eval_count": 4,
    "eval_count": 3,
}


def texts(batches: list[list[dict]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for b in batches for c in b if c["choices"])


async def collect(backend, req=REQ) -> tuple[list[list[dict]], Exception | None]:
    batches: list[list[dict]] = []
    try:
        async for batch in backend.chat_stream(req, "m"):
            assert batch, "a batch is never empty"
            batches.append(batch)
    except BackendUnavailable as exc:
        return batches, exc
    finally:
        await backend.aclose()
    return batches, None


def ollama(url: str) -> OllamaBackend:
    return OllamaBackend(BackendSpec(kind="ollama", url=url), Settings(backends=[]))


def openai_compat(url: str) -> OpenAICompatBackend:
    return OpenAICompatBackend(BackendSpec(kind="openai", url=url), Settings(backends=[]))


async def test_the_first_token_comes_alone_then_the_rest_of_its_read_as_one_batch() -> None:
    async with server(replying(ndjson(*TOKENS, DONE))) as (url, _):
        batches, error = await collect(ollama(url))
    assert error is None and [len(b) for b in batches] == [1, 4]  # "a"; then "b", "c", finish, usage
    assert texts(batches[:1]) == "a" and texts(batches) == "abc"
    assert batches[-1][-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert batches[-1][-2]["choices"][0]["finish_reason"] == "stop"


async def test_tokens_that_arrive_apart_stay_apart() -> None:
    async with server(replying(*(ndjson(t) for t in TOKENS), ndjson(DONE), gap_s=0.02)) as (url, _):
        batches, error = await collect(ollama(url))
    assert error is None
    assert [len(b) for b in batches] == [1, 1, 1, 2]  # the last: finish chunk + usage chunk
    assert texts(batches) == "abc"


async def test_a_line_split_across_reads_is_put_back_together() -> None:
    whole = ndjson(*TOKENS, DONE)
    async with server(replying(whole[:30], whole[30:70], whole[70:], gap_s=0.02)) as (url, _):
        batches, error = await collect(ollama(url))
    assert error is None and texts(batches) == "abc"


async def test_an_error_line_mid_batch_delivers_the_tokens_before_it() -> None:
    async with server(replying(ndjson(TOKENS[0], TOKENS[1], {"error": "model crashed"}))) as (url, _):
        batches, error = await collect(ollama(url))
    assert texts(batches) == "ab"
    assert error is not None and "model crashed" in str(error)


async def test_a_stream_is_read_to_its_end_so_its_connection_serves_the_next() -> None:
    async def twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunked(ndjson(*TOKENS, DONE)))
            await writer.drain()
            await asyncio.sleep(0.02)  # the end of the body comes after the done line, in its own write
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        await reader.read()

    async with server(twice) as (url, accepted):
        backend = ollama(url)
        try:
            for _ in range(2):
                assert texts([batch async for batch in backend.chat_stream(REQ, "m")]) == "abc"
        finally:
            await backend.aclose()
    assert len(accepted) == 1


async def test_a_stream_past_its_deadline_raises_backend_timeout() -> None:
    async with server(replying(*(ndjson(t) for t in TOKENS), ndjson(DONE), gap_s=0.2)) as (url, _):
        backend = ollama(url)
        deadline = asyncio.get_running_loop().time() + 0.3
        batches: list[list[dict]] = []
        try:
            with pytest.raises(BackendTimeout):
                async for batch in backend.chat_stream(REQ, "m", deadline):
                    batches.append(batch)
        finally:
            await backend.aclose()
    assert 1 <= len(batches) < 4 and texts(batches) in ("a", "ab")


def sse(*events: dict | str) -> bytes:
    return b"".join(b"data: " + (e.encode() if isinstance(e, str) else orjson.dumps(e)) + b"\n\n" for e in events)


def oa_chunk(text: str) -> dict:
    return {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


async def test_openai_sse_in_one_read_keeps_every_chunk_and_stops_at_done() -> None:
    body = b": ping\n\n" + sse(oa_chunk("a"), oa_chunk("b"), oa_chunk("c"), "[DONE]")
    async with server(replying(body)) as (url, _):
        batches, error = await collect(openai_compat(url))
    assert error is None
    assert texts(batches) == "abc"
    assert batches[-1] == [
        {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3},
        }
    ]


@pytest.mark.parametrize("bad", [{"error": {"message": "overloaded"}}, "{not json"])
async def test_openai_error_event_mid_batch_delivers_the_chunks_before_it(bad: dict | str) -> None:
    async with server(replying(sse(oa_chunk("a"), oa_chunk("b"), bad))) as (url, _):
        batches, error = await collect(openai_compat(url))
    assert texts(batches) == "ab"
    assert error is not None
