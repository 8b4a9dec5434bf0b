"""The inference flow shared by chat and text completions: resolve -> pick replica -> call -> translate.

Deadlines: the whole request (all attempts) lives under `total_timeout_s`; a stream must produce
its first chunk within `first_token_timeout_s` or the replica counts as failed and the next one
is tried. After the first chunk has been sent a failure ends the stream with an error event
(`data: {"error": ...}`) and no `[DONE]`, so the client can tell a cut answer from a whole one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

from gateway.backends.base import Backend, Chunk
from gateway.backends.pool import BackendPool, Lease
from gateway.errors import (
    BackendTimeout,
    ClientError,
    GatewayError,
    NoHealthyBackend,
    UpstreamError,
    error_payload,
)
from gateway.metrics import GatewayMetrics
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.settings import Settings

log = logging.getLogger("gateway.serving")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"
GenRequest = ChatCompletionRequest | CompletionRequest


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def json_response(obj: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(obj), status_code=status_code, media_type="application/json", headers=headers)


def outcome_of(exc: BaseException) -> str:
    if isinstance(exc, (BackendTimeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, NoHealthyBackend):
        return "unavailable"
    if isinstance(exc, ClientError):
        return "client_error"
    return "backend_error"


@dataclass(frozen=True, slots=True)
class Operation:
    unary: Callable[[Backend, Any, str], Any]
    stream: Callable[[Backend, Any, str], AsyncIterator[Chunk]]


CHAT = Operation(unary=lambda b, r, m: b.chat(r, m), stream=lambda b, r, m: b.chat_stream(r, m))
COMPLETION = Operation(unary=lambda b, r, m: b.complete(r, m), stream=lambda b, r, m: b.complete_stream(r, m))


class InferenceService:
    def __init__(self, *, pool: BackendPool, metrics: GatewayMetrics, settings: Settings) -> None:
        self.pool = pool
        self.metrics = metrics
        self.settings = settings

    async def generate(self, op: Operation, req: GenRequest, model: str) -> Response:
        """`model` is already resolved (and authorised) by the caller."""
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.total_timeout_s
        if req.stream:
            return await self._open_stream(op, req, model, t0, deadline)
        return await self._unary(op, req, model, t0, deadline)

    async def embed(self, req: EmbeddingRequest, model: str) -> Response:
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.total_timeout_s
        return await self._unary(None, req, model, t0, deadline)

    # -- unary -----------------------------------------------------------------------------

    async def _unary(self, op: Operation | None, req: Any, model: str, t0: float, deadline: float) -> Response:
        backend_s = 0.0

        async def start(backend: Backend) -> dict[str, Any]:
            nonlocal backend_s
            t = time.perf_counter()
            try:
                return await (op.unary(backend, req, model) if op else backend.embed(req, model))
            finally:
                backend_s += time.perf_counter() - t

        try:
            async with asyncio.timeout_at(deadline):
                lease, result = await self.pool.open(model, start)
        except TimeoutError:
            self._count(model, "-", "timeout")
            raise BackendTimeout(f"no answer within {self.settings.total_timeout_s:g}s") from None
        except GatewayError as exc:
            self._count(model, "-", outcome_of(exc))
            raise
        lease.done()
        usage = result.get("usage") or {}
        elapsed = time.perf_counter() - t0
        self._record(model, lease.replica.name, "success", elapsed, usage)
        self.metrics.overhead.labels(model).observe(max(0.0, elapsed - backend_s))
        return json_response(result)

    # -- streaming -------------------------------------------------------------------------

    async def _open_stream(self, op: Operation, req: GenRequest, model: str, t0: float,
                           deadline: float) -> Response:
        first_token_s = self.settings.first_token_timeout_s

        async def start(backend: Backend) -> tuple[AsyncIterator[Chunk], Chunk]:
            chunks = op.stream(backend, req, model)
            try:
                async with asyncio.timeout(first_token_s):
                    first = await anext(chunks)
            except TimeoutError:
                await chunks.aclose()
                raise BackendTimeout(f"backend {backend.name}: no first token within {first_token_s:g}s") from None
            except StopAsyncIteration:
                raise UpstreamError(f"backend {backend.name}: empty stream") from None
            except BaseException:
                await chunks.aclose()
                raise
            return chunks, first

        try:
            async with asyncio.timeout_at(deadline):
                lease, (chunks, first) = await self.pool.open(model, start)
        except TimeoutError:
            self._count(model, "-", "timeout")
            raise BackendTimeout(f"no answer within {self.settings.total_timeout_s:g}s") from None
        except GatewayError as exc:
            self._count(model, "-", outcome_of(exc))
            raise
        ttft = time.perf_counter() - t0
        self.metrics.ttft.labels(model, lease.replica.name).observe(ttft)
        body = self._relay(lease, chunks, first, req.include_usage, model, t0, ttft, deadline)
        return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)

    async def _relay(self, lease: Lease, chunks: AsyncIterator[Chunk], first: Chunk, include_usage: bool,
                     model: str, t0: float, ttft: float, deadline: float) -> AsyncIterator[bytes]:
        backend = lease.replica.name
        usage: dict[str, Any] = {}
        outcome = "success"
        try:
            chunk: Chunk | None = first
            while chunk is not None:
                if chunk.get("usage") and not chunk.get("choices"):
                    usage = chunk["usage"]
                    if include_usage:
                        yield sse(chunk)
                else:
                    yield sse(chunk)
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    chunk = None
            yield DONE
            lease.done()
        except (TimeoutError, GatewayError) as exc:
            err = exc if isinstance(exc, GatewayError) else BackendTimeout("stream exceeded the total timeout")
            outcome = outcome_of(err)
            lease.done(failed=isinstance(err, UpstreamError))
            log.warning("stream from %s broke after first byte: %s", backend, err)
            yield sse(error_payload(err))  # no [DONE]: the answer is incomplete
        except BaseException:  # client went away (cancelled) or the generator was closed
            outcome = "cancelled"
            lease.done(cancelled=True)
            raise
        finally:
            await chunks.aclose()
            elapsed = time.perf_counter() - t0
            self._record(model, backend, outcome, elapsed, usage)
            out_tokens = int(usage.get("completion_tokens") or 0)
            if out_tokens > 1:
                self.metrics.tpot.labels(model, backend).observe((elapsed - ttft) / (out_tokens - 1))

    # -- accounting ------------------------------------------------------------------------

    def _count(self, model: str, backend: str, outcome: str) -> None:
        self.metrics.requests.labels(model, backend, outcome).inc()

    def _record(self, model: str, backend: str, outcome: str, elapsed: float, usage: dict[str, Any]) -> None:
        self._count(model, backend, outcome)
        self.metrics.e2e_latency.labels(model, backend).observe(elapsed)
        if usage:
            self.metrics.prompt_tokens.labels(model, backend).inc(int(usage.get("prompt_tokens") or 0))
            self.metrics.generation_tokens.labels(model, backend).inc(int(usage.get("completion_tokens") or 0))
