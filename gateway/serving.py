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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from opentelemetry.trace import Span, Tracer
from starlette.responses import Response, StreamingResponse

from gateway.access_log import current_record
from gateway.after_answer import AfterAnswer
from gateway.backends.base import Backend, Chunk, ChunkBatch
from gateway.backends.pool import BackendPool, Lease
from gateway.errors import (
    BackendTimeout,
    ClientError,
    GatewayError,
    NoHealthyBackend,
    UpstreamError,
    error_payload,
)
from gateway.format_check import StreamedAnswer, check_answer, unary_answer
from gateway.metrics import GatewayMetrics
from gateway.protocol import SSE_DONE, ChatCompletionRequest, CompletionRequest, EmbeddingRequest, FinalPart
from gateway.settings import Settings
from gateway.tracing import DISABLED, as_current, backend_span, record_result, record_usage, start_backend_span

log = logging.getLogger("gateway.serving")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class RelayResponse(StreamingResponse):
    """A relayed stream's response: Starlette's StreamingResponse with the head it would build for an SSE
    answer, built once at import instead of per stream (its header pass runs on the way to the first
    token)."""

    RAW_HEADERS = StreamingResponse(iter(()), media_type="text/event-stream", headers=SSE_HEADERS).raw_headers

    def __init__(self, body: AsyncIterator[bytes]) -> None:  # noqa: D107 - Starlette's fields, set directly
        self.body_iterator = body
        self.status_code = 200
        self.media_type = "text/event-stream"
        self.background = None
        self.raw_headers = list(self.RAW_HEADERS)


GenRequest = ChatCompletionRequest | CompletionRequest
T = TypeVar("T")


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


class AnswerObserver(Protocol):
    """Hears an answer as the serving layer builds it, so a caller (the policy: usage, limits, cache)
    never re-parses the bytes that were just serialised."""

    # Called with every streamed chunk that has choices (not the usage-only one); None when the
    # observer has no use for them, so a stream that is not being cached pays no call per chunk.
    on_chunk: Callable[[Chunk], None] | None

    def finished(self, usage: dict[str, Any], complete: bool, result: dict[str, Any] | None,
                 body: bytes | None = None) -> None:
        """Once, when the answer ended: backend usage ({} if unknown), whether it arrived whole,
        and for a non-streamed answer the response object and the JSON bytes sent for it."""


@dataclass(frozen=True, slots=True)
class Operation:
    name: str  # gen_ai.operation.name
    unary: Callable[[Backend, Any, str], Any]
    stream: Callable[[Backend, Any, str, float], AsyncIterator[ChunkBatch]]  # (backend, req, model, deadline)


CHAT = Operation(name="chat", unary=lambda b, r, m: b.chat(r, m), stream=lambda b, r, m, d: b.chat_stream(r, m, d))
COMPLETION = Operation(name="text_completion", unary=lambda b, r, m: b.complete(r, m),
                       stream=lambda b, r, m, d: b.complete_stream(r, m, d))


class InferenceService:
    def __init__(self, *, pool: BackendPool, metrics: GatewayMetrics, settings: Settings,
                 after: AfterAnswer, tracer: Tracer = DISABLED.tracer) -> None:
        self.pool = pool
        self.after = after  # the queue the front layer runs the answers' bookkeeping from
        self.metrics = metrics
        self.settings = settings
        self.tracer = tracer

    async def generate(self, op: Operation, req: GenRequest, model: str,
                       observer: AnswerObserver | None = None) -> Response:
        """`model` is already resolved (and authorised) by the caller."""
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.total_timeout_s
        if req.stream:
            return await self._open_stream(op, req, model, t0, deadline, observer)
        return await self._unary(op, req, model, t0, deadline, observer)

    async def embed(self, req: EmbeddingRequest, model: str, observer: AnswerObserver | None = None) -> Response:
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.total_timeout_s
        return await self._unary(None, req, model, t0, deadline, observer)

    # -- unary -----------------------------------------------------------------------------

    async def _unary(self, op: Operation | None, req: Any, model: str, t0: float, deadline: float,
                     observer: AnswerObserver | None) -> Response:
        backend_s = 0.0

        async def start(backend: Backend) -> dict[str, Any]:
            nonlocal backend_s
            t = time.perf_counter()
            with backend_span(self.tracer, operation=op.name if op else "embeddings", model=model,
                              provider=backend.kind, backend=backend.name) as span:
                try:
                    result = await (op.unary(backend, req, model) if op else backend.embed(req, model))
                finally:
                    backend_s += time.perf_counter() - t
                record_result(span, result)
                return result

        lease, result = await self._open(model, start, deadline)
        lease.done()
        elapsed = time.perf_counter() - t0
        replica = lease.replica.name
        body = orjson.dumps(result)

        def book() -> None:
            usage = result.get("usage") or {}
            self._record(model, replica, "success", elapsed, usage)
            self.metrics.overhead.labels(model).observe(max(0.0, elapsed - backend_s))
            if op is CHAT:
                self._check_format(req, model, unary_answer(result))
            if observer is not None:
                observer.finished(usage, True, result, body)

        # The bookkeeping runs after the answer went out: the front layer hands `background` to its
        # AfterAnswer queue (gateway/after_answer.py), so neither this client nor its next request waits
        # for metrics, usage and the cache write. `book` is a plain callable, not a BackgroundTask.
        # `book` holds the body, not the response: a response -> task -> book -> response cycle left
        # every unary answer's objects to the cyclic collector (pauses of ~5 ms under load).
        return Response(body, media_type="application/json", background=book)  # type: ignore[arg-type]

    # -- streaming -------------------------------------------------------------------------

    async def _open_stream(self, op: Operation, req: GenRequest, model: str, t0: float,
                           deadline: float, observer: AnswerObserver | None) -> Response:
        first_token_s = self.settings.first_token_timeout_s

        async def start(backend: Backend) -> tuple[AsyncIterator[ChunkBatch], ChunkBatch, Span]:
            span = start_backend_span(self.tracer, operation=op.name, model=model, provider=backend.kind,
                                      backend=backend.name)
            try:
                chunks = op.stream(backend, req, model, deadline)  # may refuse the request before any I/O
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

        lease, (chunks, first, span) = await self._open(model, start, deadline)
        ttft = time.perf_counter() - t0
        self.metrics.ttft.labels(model, lease.replica.name).observe(ttft)
        answer = StreamedAnswer() if isinstance(req, ChatCompletionRequest) and req.response_format else None
        body = self._relay(lease, chunks, first, req, model, t0, ttft, deadline, span, answer, observer)
        return RelayResponse(body)

    async def _relay(self, lease: Lease, chunks: AsyncIterator[ChunkBatch], first: ChunkBatch, req: GenRequest,
                     model: str, t0: float, ttft: float, deadline: float, span: Span,
                     answer: StreamedAnswer | None, observer: AnswerObserver | None) -> AsyncIterator[bytes]:
        backend = lease.replica.name
        include_usage = req.include_usage
        usage: dict[str, Any] = {}
        finish_reasons: list[str] = []
        outcome = "success"
        on_chunk = observer.on_chunk if observer is not None else None
        watched = answer is not None or on_chunk is not None

        def feed(sent: ChunkBatch) -> None:  # what only the books read, done after the batch's write
            for chunk in sent:
                if answer is not None:
                    answer.feed(chunk)
                if on_chunk is not None:
                    on_chunk(chunk)

        dumps = orjson.dumps
        try:
            batch = first
            ended = False  # the usage-only chunk (`last`) arrived: by the backend contract, the stream's last
            last: Chunk | None = None
            while True:
                frames: list[bytes] = []
                for chunk in batch:  # per token: kept to the few steps every chunk needs
                    choices = chunk.get("choices")
                    if not choices and chunk.get("usage"):
                        usage, ended, last = chunk["usage"], True, chunk
                        if include_usage:
                            frames.append(b"data: " + dumps(chunk) + b"\n\n")
                        continue
                    for choice in choices or ():
                        if choice.get("finish_reason"):
                            finish_reasons.append(choice["finish_reason"])
                    frames.append(b"data: " + dumps(chunk) + b"\n\n")
                if ended:
                    break
                if frames:  # what arrived together leaves together: one write
                    yield frames[0] if len(frames) == 1 else b"".join(frames)
                if watched:
                    feed(batch)
                try:
                    batch = await anext(chunks)  # the backend ends the stream by `deadline` (BackendTimeout)
                except StopAsyncIteration:
                    frames = []
                    break
            # The last frames, [DONE] and the end of the body leave in one write.
            frames.append(SSE_DONE)
            yield FinalPart(b"".join(frames))
            if ended:
                if watched:  # the last batch, less its usage-only chunk (a stream that just stopped was fed)
                    feed([chunk for chunk in batch if chunk is not last])
                await self._drain(chunks, backend)
            lease.done()
        except GatewayError as err:  # a stream past its deadline raises BackendTimeout (the backend contract)
            outcome = outcome_of(err)
            lease.done(failed=isinstance(err, UpstreamError))
            log.warning("stream from %s broke after first byte: %s", backend, err)
            yield FinalPart(sse(error_payload(err)))  # no [DONE]: the answer is incomplete
        except BaseException:  # client went away (cancelled) or the generator was closed
            outcome = "cancelled"
            lease.done(cancelled=True)
            raise
        finally:
            await chunks.aclose()
            elapsed = time.perf_counter() - t0
            record_usage(span, input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens"),
                         finish_reasons=finish_reasons)
            if outcome != "success":
                span.set_attribute("error.type", outcome)
            span.end()  # here, not later: the span's end is the stream's

            def book() -> None:  # after the answer (gateway/after_answer.py), like a unary answer's
                self._record(model, backend, outcome, elapsed, usage)
                out_tokens = int(usage.get("completion_tokens") or 0)
                if out_tokens > 1:
                    self.metrics.tpot.labels(model, backend).observe((elapsed - ttft) / (out_tokens - 1))
                if answer is not None and outcome == "success":
                    self._check_format(req, model, answer.text())
                if observer is not None:
                    observer.finished(usage, outcome == "success", None)

            self.after.defer(book)

    @staticmethod
    async def _drain(chunks: AsyncIterator[ChunkBatch], backend: str) -> None:
        """Read a stream whose last chunk was relayed to its end, so the backend's connection is reused.
        The client has its whole answer by now: what goes wrong here is only logged."""
        try:
            async for _ in chunks:
                log.warning("backend %s sent chunks after its usage chunk; dropped", backend)
        except GatewayError as exc:
            log.warning("stream from %s did not end cleanly after its last chunk: %s", backend, exc)

    async def _open(self, model: str, start: Callable[[Backend], Awaitable[T]], deadline: float) -> tuple[Lease, T]:
        """The pool's failover loop under the request's deadline; failures before a replica answered are
        counted here (backend label "-") because no replica owns them."""
        try:
            async with asyncio.timeout_at(deadline):
                return await self.pool.open(model, start)
        except TimeoutError:
            self._count(model, "-", "timeout")
            raise BackendTimeout(f"no answer within {self.settings.total_timeout_s:g}s") from None
        except GatewayError as exc:
            self._count(model, "-", outcome_of(exc))
            raise

    # -- accounting ------------------------------------------------------------------------

    def _count(self, model: str, backend: str, outcome: str) -> None:
        self.metrics.requests.labels(model, backend, outcome).inc()
        record = current_record()
        record.model, record.backend = model, None if backend == "-" else backend

    def _record(self, model: str, backend: str, outcome: str, elapsed: float, usage: dict[str, Any]) -> None:
        self._count(model, backend, outcome)
        self.metrics.e2e_latency.labels(model, backend).observe(elapsed)
        if usage:
            self.metrics.prompt_tokens.labels(model, backend).inc(int(usage.get("prompt_tokens") or 0))
            self.metrics.generation_tokens.labels(model, backend).inc(int(usage.get("completion_tokens") or 0))
            record = current_record()
            record.prompt_tokens, record.completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")

    def _check_format(self, req: GenRequest, model: str, answer: str) -> None:
        """Count whether a JSON-format answer is what was asked for (issue 4's format compliance)."""
        verdict = check_answer(getattr(req, "response_format", None), answer)
        if verdict is not None:
            self.metrics.format_compliance.labels(model, verdict).inc()
