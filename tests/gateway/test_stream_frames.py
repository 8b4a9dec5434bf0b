"""How a relayed stream is cut into writes: what arrived together in one write, and the last frames
with [DONE] and the end of the body in one (FinalPart). (The first token comes alone from the
transport: tests/gateway/test_stream_batches.py.)
And what an answer leaves behind: nothing for the cyclic garbage collector."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from opentelemetry.trace import INVALID_SPAN
from prometheus_client import CollectorRegistry
from starlette.responses import StreamingResponse

from gateway.access_log import AccessLog
from gateway.after_answer import AfterAnswer
from gateway.front import FrontDoor, _Exchange
from gateway.http_metrics import HttpMetrics
from gateway.metrics import GatewayMetrics
from gateway.protocol import SSE_DONE, ChatCompletionRequest, FinalPart
from gateway.serving import CHAT, InferenceService
from gateway.settings import Settings

REQ = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                            "stream": True})


def chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


USAGE = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [],
         "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}


class FakeLease:
    class replica:  # noqa: N801 - the attribute path the relay reads
        name = "r1"

    def __init__(self) -> None:
        self.calls: list[dict[str, bool]] = []

    def done(self, *, failed: bool = False, cancelled: bool = False) -> None:
        self.calls.append({"failed": failed, "cancelled": cancelled})


async def batches(*items: list[dict[str, Any]]) -> AsyncIterator[list[dict[str, Any]]]:
    for item in items:
        yield item


def service() -> InferenceService:
    return InferenceService(pool=None, metrics=GatewayMetrics(CollectorRegistry()),  # type: ignore[arg-type]
                            settings=Settings(backends=[]), after=AfterAnswer())


async def relay(first: list[dict[str, Any]], *rest: list[dict[str, Any]]) -> tuple[list[bytes], FakeLease]:
    lease = FakeLease()
    body = service()._relay(lease, batches(*rest), first, REQ, "m", time.perf_counter(), 0.0,  # type: ignore[arg-type]
                            asyncio.get_running_loop().time() + 30, INVALID_SPAN, None, None)
    return [part async for part in body], lease


def contents(part: bytes) -> list[str]:
    return [orjson.loads(line[6:])["choices"][0]["delta"]["content"]
            for line in part.split(b"\n\n") if line.startswith(b"data: {")]


async def test_a_batch_that_ends_the_stream_is_one_write_with_done_and_the_end() -> None:
    parts, lease = await relay([chunk("a"), chunk("b"), chunk("c", "stop"), USAGE])
    assert [contents(p) for p in parts] == [["a", "b", "c"]]
    assert type(parts[0]) is FinalPart and parts[0].endswith(SSE_DONE)
    assert lease.calls == [{"failed": False, "cancelled": False}]


async def test_later_batches_leave_one_write_each_and_the_last_carries_done() -> None:
    parts, lease = await relay([chunk("a")], [chunk("b"), chunk("c")], [chunk("d", "stop"), USAGE])
    assert [contents(p) for p in parts] == [["a"], ["b", "c"], ["d"]]
    assert [type(p) for p in parts] == [bytes, bytes, FinalPart] and parts[-1].endswith(SSE_DONE)
    assert len(lease.calls) == 1


async def test_chunks_after_the_usage_chunk_are_dropped_not_sent_after_the_end() -> None:
    parts, lease = await relay([chunk("a", "stop")], [USAGE], [chunk("late")])
    assert [contents(p) for p in parts] == [["a"], []]
    assert parts[-1] == SSE_DONE and type(parts[-1]) is FinalPart
    assert lease.calls == [{"failed": False, "cancelled": False}]


async def test_the_front_sends_a_final_part_as_the_end_of_the_body() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def body() -> AsyncIterator[bytes]:
        yield b"data: 1\n\n"
        yield FinalPart(b"data: 2\n\n" + SSE_DONE)

    front = FrontDoor(inner=None, routes={}, max_body_bytes=1000,  # type: ignore[arg-type]
                      http_metrics=HttpMetrics(CollectorRegistry()), access_log=AccessLog(), after=AfterAnswer())
    exchange = _Exchange(b"rid")
    await front._stream(StreamingResponse(body(), media_type="text/event-stream"), receive, send, exchange)
    assert [(m["type"], m.get("body"), m.get("more_body")) for m in sent] == [
        ("http.response.start", None, None),
        ("http.response.body", b"data: 1\n\n", True),
        ("http.response.body", b"data: 2\n\n" + SSE_DONE, False),  # no separate empty end-of-body message
    ]
    assert exchange.done


class FakePool:
    async def open(self, model: str, start: Any) -> tuple[Any, Any]:
        class Backend:
            kind, name = "ollama", "r1"

            async def chat(self, req: Any, model: str) -> dict[str, Any]:
                return {"id": "x", "object": "chat.completion", "created": 1, "model": model, "usage": {},
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                     "finish_reason": "stop"}]}

        return FakeLease(), await start(Backend())


async def test_a_unary_answer_leaves_no_reference_cycle() -> None:
    """A cycle (response -> background task -> closure -> response) made every answer's objects wait
    for the cyclic collector, whose passes then paused the loop for ~5 ms under load."""
    svc = InferenceService(pool=FakePool(), metrics=GatewayMetrics(CollectorRegistry()),  # type: ignore[arg-type]
                           settings=Settings(backends=[]), after=AfterAnswer())
    plain = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            response = await svc.generate(CHAT, plain, "m")
            assert response.body.startswith(b'{"id":"x"')
            assert response.background is not None
            response.background()  # a plain callable: the front layer queues it (gateway/after_answer.py)
            del response
        gc.collect()
        left = [type(o).__name__ for o in gc.garbage if type(o).__name__ in ("Response", "BackgroundTask")]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert left == []
