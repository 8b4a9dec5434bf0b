"""The inference flow shared by chat and text completions: resolve -> pick replica -> call -> translate.

Deadlines: the whole request (all attempts) lives under `total_timeout_s`; a stream must produce
its first chunk within `first_token_timeout_s` or the replica counts as failed and the next one
is tried. After the first chunk has been sent a failure ends the stream with an error event
(`data: {"error": ...}`) and no `[DONE]`, so the client can tell a cut answer from a whole one.

Each answer is described in an `Answer` (gateway/accounting.py) and booked by the response's
background task, after the client has it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from opentelemetry.trace import Span, Tracer
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.accounting import Accounting, Answer, Ticket
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
from gateway.format_check import StreamedAnswer, structured_format, unary_answer
from gateway.protocol import SSE_DONE, ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.settings import Settings
from gateway.tracing import DISABLED, as_current, backend_span, record_result, record_usage, start_backend_span

log = logging.getLogger("gateway.serving")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class AnswerStream(StreamingResponse):
    """An SSE answer whose bookkeeping runs however the stream ends.

    Starlette skips a response's background task when the client hangs up mid-stream, but the books
    must still be settled (the reservation reconciled, the outcome counted): `settle` runs after the
    body in every case, once the body's generator is closed (which closes the upstream call). A client
    leaving is not an error, so its disconnect ends here instead of reaching the error handlers.
    """

    def __init__(self, body: AsyncIterator[bytes], *, settle: BackgroundTask | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(body, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})
        self.settle = settle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (ClientDisconnect, OSError):
            pass
        finally:
            body = self.body_iterator
            if hasattr(body, "aclose"):
                await body.aclose()
            if self.settle is not None:
                await self.settle()


def run_after(response: Response, task: BackgroundTask) -> None:
    """Add `task` to what runs once `response` went out (its background task, or an AnswerStream's settle)."""
    if isinstance(response, AnswerStream):
        response.settle = BackgroundTasks([response.settle, task]) if response.settle else task
    else:
        response.background = BackgroundTasks([response.background, task]) if response.background else task


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
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "backend_error"


@dataclass(frozen=True, slots=True)
class Operation:
    name: str  # gen_ai.operation.name
    unary: Callable[[Backend, Any, str], Any]
    stream: Callable[[Backend, Any, str, float], AsyncIterator[ChunkBatch]]  # (backend, req, model, deadline)


CHAT = Operation(name="chat", unary=lambda b, r, m: b.chat(r, m), stream=lambda b, r, m, d: b.chat_stream(r, m, d))
COMPLETION = Operation(name="text_completion", unary=lambda b, r, m: b.complete(r, m),
                       stream=lambda b, r, m, d: b.complete_stream(r, m, d))


def response_format_of(req: Any) -> Any:
    """The format an answer is checked against (chat requests asking for JSON), else None."""
    if isinstance(req, ChatCompletionRequest):
        return structured_format(req.response_format)
    return None


class InferenceService:
    def __init__(self, *, pool: BackendPool, accounting: Accounting, settings: Settings,
                 tracer: Tracer = DISABLED.tracer) -> None:
        self.pool = pool
        self.accounting = accounting
        self.settings = settings
        self.tracer = tracer

    async def generate(self, op: Operation, req: GenRequest, models: tuple[str, ...], ticket: Ticket) -> Response:
        """`models`: resolved (and authorised) by the caller; the first, then each fallback, until one answers."""
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.total_timeout_s
        if req.stream:
            return await self._open_stream(op, req, models, t0, deadline, ticket)
        return await self._unary(op, req, models, t0, deadline, ticket)

    async def embed(self, req: EmbeddingRequest, models: tuple[str, ...], ticket: Ticket) -> Response:
        t0 = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + self.settings.total_timeout_s
        return await self._unary(None, req, models, t0, deadline, ticket)

    # -- unary -----------------------------------------------------------------------------

    async def _unary(self, op: Operation | None, req: Any, models: tuple[str, ...], t0: float, deadline: float,
                     ticket: Ticket) -> Response:
        backend_s = 0.0

        async def start(backend: Backend, model: str) -> dict[str, Any]:
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

        model, lease, result = await self._open(models, start, deadline)
        lease.done()
        body = orjson.dumps(result)
        response_format = response_format_of(req)
        whole = bool(result.get("data")) or all(c.get("finish_reason") for c in result.get("choices") or [{}])
        answer = Answer(model=model, backend=lease.replica.name, elapsed_s=time.perf_counter() - t0,
                        backend_s=backend_s, usage=result.get("usage") or {}, complete=whole, result=result,
                        body=body, response_format=response_format,
                        text=unary_answer(result) if response_format is not None else None)
        return Response(body, media_type="application/json", headers={"X-Model-Variant": model},
                        background=BackgroundTask(self.accounting.settle, ticket, answer))

    # -- streaming -------------------------------------------------------------------------

    async def _open_stream(self, op: Operation, req: GenRequest, models: tuple[str, ...], t0: float,
                           deadline: float, ticket: Ticket) -> Response:
        first_token_s = self.settings.first_token_timeout_s

        async def start(backend: Backend, model: str) -> tuple[AsyncIterator[ChunkBatch], ChunkBatch, Span]:
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

        model, lease, (chunks, first, span) = await self._open(models, start, deadline)
        response_format = response_format_of(req)
        answer = Answer(model=model, backend=lease.replica.name, ttft_s=time.perf_counter() - t0,
                        response_format=response_format)
        text = StreamedAnswer() if response_format is not None else None
        body = self._relay(lease, chunks, first, req, t0, span, answer, text, ticket)
        return AnswerStream(body, settle=BackgroundTask(self.accounting.settle, ticket, answer),
                            headers={"X-Model-Variant": model})

    async def _relay(self, lease: Lease, chunks: AsyncIterator[ChunkBatch], first: ChunkBatch, req: GenRequest,
                     t0: float, span: Span, answer: Answer, text: StreamedAnswer | None,
                     ticket: Ticket) -> AsyncIterator[bytes]:
        """The stream's body; fills in `answer` as it goes, for the books settled after it."""
        backend = lease.replica.name
        include_usage = req.include_usage
        finish_reasons: list[str] = []
        watched = text is not None or ticket.assembler is not None
        dumps = orjson.dumps
        try:
            batch: ChunkBatch = first
            ended = False  # the usage-only chunk arrived: by the backend contract, the stream's last
            while True:
                frames: list[bytes] = []
                for chunk in batch:
                    choices = chunk.get("choices")
                    if not choices and chunk.get("usage"):
                        answer.usage, ended = chunk["usage"], True
                        if include_usage:
                            frames.append(b"data: " + dumps(chunk) + b"\n\n")
                        continue
                    for choice in choices or ():
                        if choice.get("finish_reason"):
                            finish_reasons.append(choice["finish_reason"])
                    frames.append(b"data: " + dumps(chunk) + b"\n\n")
                    if watched:
                        self._feed(chunk, text, ticket)
                if ended:
                    frames.append(SSE_DONE)  # the last frames and [DONE] leave in one write
                    yield b"".join(frames)
                    await self._drain(chunks, backend)
                    break
                if frames:  # what arrived together leaves together: one write
                    yield b"".join(frames)
                try:
                    batch = await anext(chunks)  # the backend ends the stream by its deadline (BackendTimeout)
                except StopAsyncIteration:
                    yield SSE_DONE
                    break
            answer.complete = True
            lease.done()
        except GatewayError as err:  # a stream past its deadline raises BackendTimeout (the backend contract)
            answer.outcome = outcome_of(err)
            lease.done(failed=isinstance(err, UpstreamError))
            log.warning("stream from %s broke after first byte: %s", backend, err)
            yield sse(error_payload(err))  # no [DONE]: the answer is incomplete
        except BaseException:  # client went away (cancelled) or the generator was closed
            answer.outcome = "cancelled"
            lease.done(cancelled=True)
            raise
        finally:
            answer.elapsed_s = time.perf_counter() - t0
            if text is not None:
                answer.text = text.text()
            usage = answer.usage
            record_usage(span, input_tokens=usage.get("prompt_tokens"), output_tokens=usage.get("completion_tokens"),
                         finish_reasons=finish_reasons)
            if answer.outcome != "success":
                span.set_attribute("error.type", answer.outcome)
            span.end()  # here, not later: the span's end is the stream's
            # Shielded: when the client hangs up, Starlette cancels this body's task group, and every await
            # here would be cancelled again before the upstream call is closed.
            await asyncio.shield(chunks.aclose())

    @staticmethod
    def _feed(chunk: Chunk, text: StreamedAnswer | None, ticket: Ticket) -> None:
        if text is not None:
            text.feed(chunk)
        if ticket.assembler is not None:
            ticket.assembler.add(chunk)

    @staticmethod
    async def _drain(chunks: AsyncIterator[ChunkBatch], backend: str) -> None:
        """Read a stream whose last chunk was relayed to its end, so the backend's connection is reused.
        The client has its whole answer by now: what goes wrong here is only logged."""
        try:
            async for _ in chunks:
                log.warning("backend %s sent chunks after its usage chunk; dropped", backend)
        except GatewayError as exc:
            log.warning("stream from %s did not end cleanly after its last chunk: %s", backend, exc)

    async def _open(self, models: tuple[str, ...], start: Callable[[Backend, str], Awaitable[T]],
                    deadline: float) -> tuple[str, Lease, T]:
        """The pool's failover loop under the request's deadline, for each model in turn: a fallback is
        tried only when every replica of the models before it failed (before any byte was sent)."""
        try:
            async with asyncio.timeout_at(deadline):
                for i, model in enumerate(models):
                    try:
                        lease, result = await self.pool.open(model, lambda backend, m=model: start(backend, m))
                        return model, lease, result
                    except (NoHealthyBackend, UpstreamError):
                        if i == len(models) - 1:
                            raise
                        log.warning("model %s could not answer; falling back to %s", model, models[i + 1])
        except TimeoutError:
            raise BackendTimeout(f"no answer within {self.settings.total_timeout_s:g}s") from None
        raise AssertionError("unreachable: models is never empty")
