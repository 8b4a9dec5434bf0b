"""Relaying an answer to the client: a unary answer as JSON, a stream as server-sent events chunk by
chunk (what arrived together leaves in one write), or a stored answer from the cache. Each fills in the
request's `Answer` as it goes, for the books settled after the last byte.

The stream contract (OpenAI's): every chunk as an SSE event, the usage chunk only when the client asked
for it (`stream_options.include_usage`), and `data: [DONE]` last. A stream the backend breaks after the
first byte ends with an error event and no `[DONE]`, so the client knows the answer is incomplete.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from opentelemetry.trace import Span
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import ClientDisconnect
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from gateway.backends.base import ChunkBatch, ChunkStream
from gateway.errors import GatewayError, UpstreamError, error_payload
from gateway.observability.failures import FailureLog
from gateway.observability.tracing import record_usage
from gateway.protocol.answer import Answer, outcome_of
from gateway.protocol.assembly import StreamAssembler, replay_sse
from gateway.protocol.requests import ChatCompletionRequest, GenerationRequest, InferenceRequest
from gateway.protocol.sse import SSE_DONE, sse
from gateway.protocol.structured import StreamedAnswer, structured_format, unary_answer
from gateway.replicas.call import OpenStream, UnaryAnswer

log = logging.getLogger("gateway.relay")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class AnswerStream(StreamingResponse):
    """An SSE answer whose bookkeeping runs however the stream ends.

    Starlette skips a response's background task when the client hangs up mid-stream, but the books
    must still be settled (the reservation reconciled, the outcome counted): `settle` runs after the
    body in every case, once the body's generator is closed (which closes the upstream call). A client
    leaving is not an error, so its disconnect ends here instead of reaching the error handlers.
    """

    def __init__(self, body: AsyncIterator[bytes], *, headers: dict[str, str] | None = None) -> None:
        super().__init__(body, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})
        self.settle: BackgroundTask | BackgroundTasks | None = None

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


def response_format_of(req: InferenceRequest) -> Any:
    """The format an answer is checked against (chat requests asking for JSON), else None."""
    if isinstance(req, ChatCompletionRequest):
        return structured_format(req.response_format)
    return None


def unary(call: UnaryAnswer, req: InferenceRequest, started: float) -> tuple[Response, Answer]:
    """A whole answer, as the JSON the backend's driver built."""
    result = call.result
    body = orjson.dumps(result)
    response_format = response_format_of(req)
    whole = bool(result.get("data")) or all(c.get("finish_reason") for c in result.get("choices") or [{}])
    answer = Answer(
        model=call.model,
        backend=call.lease.replica.name,
        elapsed_s=time.perf_counter() - started,
        backend_s=call.backend_s,
        usage=result.get("usage") or {},
        complete=whole,
        result=result,
        body=body,
        response_format=response_format,
        text=unary_answer(result) if response_format is not None else None,
    )
    return Response(body, media_type="application/json", headers={"X-Model-Variant": call.model}), answer


def stream(
    opened: OpenStream, req: GenerationRequest, started: float, *, assemble: bool, failures: FailureLog
) -> tuple[Response, Answer]:
    """A stream relayed as it arrives. `assemble`: rebuild the whole answer too (cache, inference log)."""
    response_format = response_format_of(req)
    answer = Answer(
        model=opened.model,
        backend=opened.lease.replica.name,
        ttft_s=time.perf_counter() - started,
        response_format=response_format,
        assembled=StreamAssembler() if assemble else None,
    )
    text = StreamedAnswer() if response_format is not None else None
    body = _relay(opened, req, started, answer, text, failures)
    return AnswerStream(body, headers={"X-Model-Variant": opened.model}), answer


def from_cache(raw: bytes, model: str, *, stream: bool, include_usage: bool) -> tuple[Response, Answer]:
    """A stored answer of `model`: as stored, or replayed as a stream."""
    answer, headers = Answer(model=model, outcome="cache_hit"), {"X-Model-Variant": model}
    if stream:
        whole = b"".join(replay_sse(orjson.loads(raw), include_usage=include_usage))

        async def body() -> AsyncIterator[bytes]:
            yield whole  # the stored answer is all here: one write

        return AnswerStream(body(), headers=headers), answer
    return Response(raw, media_type="application/json", headers=headers), answer


async def _relay(
    opened: OpenStream,
    req: GenerationRequest,
    started: float,
    answer: Answer,
    text: StreamedAnswer | None,
    failures: FailureLog,
) -> AsyncIterator[bytes]:
    """The stream's body; fills in `answer` as it goes."""
    lease, chunks, span = opened.lease, opened.chunks, opened.span
    backend = lease.replica.name
    include_usage = req.include_usage
    assembler = answer.assembled
    finish_reasons: list[str] = []
    watched = text is not None or assembler is not None
    dumps = orjson.dumps
    try:
        batch: ChunkBatch = opened.first
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
                    delta = choice.get("delta")
                    if (delta.get("content") or delta.get("tool_calls")) if delta else choice.get("text"):
                        answer.relayed += 1  # about one token each: what is charged if no usage comes
                frames.append(b"data: " + dumps(chunk) + b"\n\n")
                if watched:
                    if text is not None:
                        text.feed(chunk)
                    if assembler is not None:
                        assembler.add(chunk)
            if ended:
                frames.append(SSE_DONE)  # the last frames and [DONE] leave in one write
                yield b"".join(frames)
                await _drain(chunks, backend, failures)
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
        answer.elapsed_s = time.perf_counter() - started
        if text is not None:
            answer.text = text.text()
        _end_span(span, answer, finish_reasons)
        # Shielded: when the client hangs up, Starlette cancels this body's task group, and every await
        # here would be cancelled again before the upstream call is closed.
        await asyncio.shield(chunks.aclose())


def _end_span(span: Span, answer: Answer, finish_reasons: list[str]) -> None:
    """The backend span ends with the stream (not later), with the answer's usage and outcome."""
    usage = answer.usage
    record_usage(
        span,
        input_tokens=usage.get("prompt_tokens"),
        output_tokens=usage.get("completion_tokens"),
        finish_reasons=finish_reasons,
    )
    if answer.outcome != "success":
        span.set_attribute("error.type", answer.outcome)
    span.end()


async def _drain(chunks: ChunkStream, backend: str, failures: FailureLog) -> None:
    """Read a stream whose last chunk was relayed to its end, so the backend's connection is reused.
    The client has its whole answer by now: what goes wrong here is only recorded."""
    try:
        async for _ in chunks:
            log.warning("backend %s sent chunks after its usage chunk; dropped", backend)
    except GatewayError as exc:
        failures.record("stream_tail", exc, backend=backend)
