"""Calling a replica: the step every inference request and every shadow copy goes through.

Under the request's deadline, the first model (then each fallback, when every replica of the ones
before failed) goes to the pool, which picks a replica (breaker, routing policy, affinity) and fails
over to another until one *starts* answering: a unary call returns its answer, a stream its first
batch of chunks (within the first-token timeout). Each attempt is a GenAI client span. Once a stream's
first batch is in hand the caller owns the lease and relays the rest: no retry is possible after that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from opentelemetry.trace import Span, Tracer

from gateway.backends.base import Backend, ChunkBatch, ChunkStream
from gateway.errors import BackendTimeout, NoHealthyBackend, UpstreamError
from gateway.observability.tracing import DISABLED, as_current, backend_span, record_result, start_backend_span
from gateway.protocol.requests import InferenceRequest
from gateway.replicas.affinity import affinity_key
from gateway.replicas.pool import BackendPool, Lease
from gateway.settings import Settings

log = logging.getLogger("gateway.call")
T = TypeVar("T")


async def _start_for(start: Callable[[Backend, str], Awaitable[T]], model: str, backend: Backend) -> T:
    return await start(backend, model)


@dataclass(frozen=True, slots=True)
class Operation:
    name: str  # gen_ai.operation.name
    unary: Callable[[Backend, Any, str], Awaitable[dict[str, Any]]]
    # (backend, req, model, deadline); None: the operation has no streamed form
    stream: Callable[[Backend, Any, str, float], ChunkStream] | None = None


CHAT = Operation("chat", unary=lambda b, r, m: b.chat(r, m), stream=lambda b, r, m, d: b.chat_stream(r, m, d))
COMPLETION = Operation(
    "text_completion", unary=lambda b, r, m: b.complete(r, m), stream=lambda b, r, m, d: b.complete_stream(r, m, d)
)
EMBEDDINGS = Operation("embeddings", unary=lambda b, r, m: b.embed(r, m))


@dataclass(slots=True)
class UnaryAnswer:
    model: str  # the model that answered (a fallback's, when it did)
    lease: Lease
    result: dict[str, Any]
    backend_s: float  # time inside the backend, over every attempt


@dataclass(slots=True)
class OpenStream:
    model: str
    lease: Lease
    chunks: ChunkStream  # the rest of the stream
    first: ChunkBatch
    span: Span  # ends with the stream


class ReplicaCaller:
    def __init__(self, *, pool: BackendPool, settings: Settings, tracer: Tracer = DISABLED.tracer) -> None:
        self.pool = pool
        self.settings = settings
        self.tracer = tracer

    def deadline(self) -> float:
        """When a request starting now must be over (event-loop time), all attempts included."""
        return asyncio.get_running_loop().time() + self.settings.total_timeout_s

    async def unary(
        self,
        op: Operation,
        req: InferenceRequest,
        models: tuple[str, ...],
        *,
        deadline: float | None = None,
        shadow: bool = False,
    ) -> UnaryAnswer:
        """The whole answer from the first replica that gives one. The lease is already given back.
        `deadline`: event-loop time (default: GATEWAY_TOTAL_TIMEOUT_S from now)."""
        deadline = deadline if deadline is not None else self.deadline()
        backend_s = 0.0

        async def start(backend: Backend, model: str) -> dict[str, Any]:
            nonlocal backend_s
            t = time.perf_counter()
            with backend_span(
                self.tracer, operation=op.name, model=model, provider=backend.kind, backend=backend.name, shadow=shadow
            ) as span:
                try:
                    result = await op.unary(backend, req, model)
                finally:
                    backend_s += time.perf_counter() - t
                record_result(span, result)
                return result

        model, lease, result = await self._first_to_answer(models, start, deadline, req)
        lease.done()
        return UnaryAnswer(model=model, lease=lease, result=result, backend_s=backend_s)

    async def stream(
        self, op: Operation, req: InferenceRequest, models: tuple[str, ...], *, deadline: float | None = None
    ) -> OpenStream:
        """A stream whose first batch arrived; the caller relays the rest and ends the lease and the span."""
        deadline = deadline if deadline is not None else self.deadline()
        stream = op.stream
        assert stream is not None, f"{op.name} has no streamed form"
        first_token_s = self.settings.first_token_timeout_s

        async def start(backend: Backend, model: str) -> tuple[ChunkStream, ChunkBatch, Span]:
            span = start_backend_span(
                self.tracer, operation=op.name, model=model, provider=backend.kind, backend=backend.name
            )
            try:
                chunks = stream(backend, req, model, deadline)  # may refuse the request before any I/O
            except BaseException:
                span.end()
                raise
            try:
                # The span outlives this function (it ends with the stream), so it is current only here.
                with as_current(span):
                    async with asyncio.timeout(first_token_s):
                        first = await anext(chunks)
            except TimeoutError:
                await chunks.aclose()
                span.end()
                raise BackendTimeout(f"backend {backend.name}: no first token within {first_token_s:g}s") from None
            except StopAsyncIteration:
                span.end()
                raise UpstreamError(f"backend {backend.name}: empty stream") from None
            except BaseException:
                await chunks.aclose()
                span.end()
                raise
            return chunks, first, span

        model, lease, (chunks, first, span) = await self._first_to_answer(models, start, deadline, req)
        return OpenStream(model=model, lease=lease, chunks=chunks, first=first, span=span)

    async def _first_to_answer(
        self,
        models: tuple[str, ...],
        start: Callable[[Backend, str], Awaitable[T]],
        deadline: float,
        req: InferenceRequest,
    ) -> tuple[str, Lease, T]:
        """The pool's failover loop under the request's deadline, for each model in turn: a fallback is
        tried only when every replica of the models before it failed (before any byte was sent)."""
        key = affinity_key(req, self.settings.affinity_prefix_chars)  # the pool uses it under prefix_affinity
        try:
            async with asyncio.timeout_at(deadline):
                for i, model in enumerate(models):
                    try:
                        lease, result = await self.pool.open(model, partial(_start_for, start, model), affinity_key=key)
                        return model, lease, result
                    except (NoHealthyBackend, UpstreamError):
                        if i == len(models) - 1:
                            raise
                        log.warning("model %s could not answer; falling back to %s", model, models[i + 1])
        except TimeoutError:
            raise BackendTimeout(f"no answer within {self.settings.total_timeout_s:g}s") from None
        raise AssertionError("unreachable: models is never empty")
