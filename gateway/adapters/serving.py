"""A replica that serves LoRA adapters under their public names: a driver plus its adapter plan.

A request names an adapter by its public name (`orders`); the plan turns that into its server's terms
(llama.cpp: the base model plus a per-request `lora` list; vLLM: the adapter's versioned name, loaded
first if needed). Answers carry the public name back in `model`, so clients never see a server's
internal names. A server that answers "no such model" before any byte of the answer came is given one
more try when the plan says it can repair that (vLLM reloads an adapter a restart dropped).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from opentelemetry.trace import Tracer

from gateway.adapters.plan import AdapterPlan
from gateway.backends.base import Backend, ChunkBatch, ChunkStream, Extra
from gateway.errors import ReplicaLacksModel
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

Unary = Callable[[Any, str, Extra], Awaitable[dict[str, Any]]]
Stream = Callable[[Any, str, float | None, Extra], ChunkStream]


class AdapterServing(Backend):
    def __init__(self, driver: Backend, plan: AdapterPlan) -> None:
        super().__init__(driver.spec, driver.settings)
        self.kind = driver.kind
        self.driver = driver
        self.plan = plan

    async def list_models(self) -> list[str]:
        return await self.plan.discover()

    def offers(self, model: str) -> bool:
        return self.plan.offers(model)

    def version(self, model: str) -> str | None:
        return self.plan.version(model)

    def trace_with(self, tracer: Tracer) -> None:
        self.driver.trace_with(tracer)

    async def aclose(self) -> None:
        await self.driver.aclose()

    async def _unary(self, call: Unary, req: Any, model: str) -> dict[str, Any]:
        for attempt in (1, 2):
            target, extra = await self.plan.target(model)
            lease = await self.plan.began(target)
            try:
                result = await call(req, target, extra)
            except ReplicaLacksModel:
                if attempt == 2 or not await self.plan.missing(model, target):
                    raise
                continue
            finally:
                self.plan.ended(target, lease)
            result["model"] = model
            return result
        raise AssertionError("unreachable")

    async def _stream(self, call: Stream, req: Any, model: str, deadline: float | None) -> ChunkStream:
        for attempt in (1, 2):
            target, extra = await self.plan.target(model)
            lease = await self.plan.began(target)
            try:
                async with aclosing(call(req, target, deadline, extra)) as batches:
                    try:
                        first = await anext(batches)
                    except ReplicaLacksModel:
                        if attempt == 2 or not await self.plan.missing(model, target):
                            raise
                        continue
                    except StopAsyncIteration:
                        return
                    yield _relabel(first, model)
                    async for batch in batches:
                        yield _relabel(batch, model)
                    return
            finally:
                self.plan.ended(target, lease)

    async def chat(self, req: ChatCompletionRequest, model: str, extra: Extra = None) -> dict[str, Any]:
        return await self._unary(self.driver.chat, req, model)

    def chat_stream(
        self, req: ChatCompletionRequest, model: str, deadline: float | None = None, extra: Extra = None
    ) -> ChunkStream:
        return self._stream(self.driver.chat_stream, req, model, deadline)

    async def complete(self, req: CompletionRequest, model: str, extra: Extra = None) -> dict[str, Any]:
        return await self._unary(self.driver.complete, req, model)

    def complete_stream(
        self, req: CompletionRequest, model: str, deadline: float | None = None, extra: Extra = None
    ) -> ChunkStream:
        return self._stream(self.driver.complete_stream, req, model, deadline)

    async def embed(self, req: EmbeddingRequest, model: str) -> dict[str, Any]:
        return await self.driver.embed(req, model)


def _relabel(batch: ChunkBatch, model: str) -> ChunkBatch:
    for chunk in batch:
        if "model" in chunk:
            chunk["model"] = model
    return batch
