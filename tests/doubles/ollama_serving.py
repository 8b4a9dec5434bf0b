"""What the native (/api) and OpenAI-style (/v1) handlers share: errors, body parsing,
the generation plan, token pacing and fault injection.

Exceptions:

    ApiError      -> an HTTP error answer (status + message); shaped per API by the app
    StreamCut     -> raised inside a body iterator: uvicorn closes the socket mid-body,
                     so the client sees a broken chunked stream, never a clean end
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.doubles.ollama_state import DoubleState, ModelRecord, state_of
from tests.doubles.ollama_text import (
    count_prompt_tokens,
    json_mode_tokens,
    plain_tokens,
    schema_tokens,
    seed_of,
)

QUEUE_FULL_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
LOAD_DURATION_NS = 500_000  # what "loading" a model costs in the double
PROMPT_EVAL_NS_PER_TOKEN = 100_000


class ApiError(Exception):
    """An error answer; the app renders it as Ollama's or OpenAI's error shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StreamCut(Exception):
    """A deliberate mid-body connection cut (the `die_mid_stream` fault)."""


def not_found(name: str) -> ApiError:
    return ApiError(404, f'model "{name}" not found, try pulling it first')


async def read_json(request: Request, endpoint: str) -> dict[str, Any]:
    """The request's JSON object, recorded in stats; 400 with a readable message otherwise."""
    state = state_of(request)
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as exc:
        state.stats.record(endpoint, raw.decode(errors="replace"))
        raise ApiError(400, f"invalid JSON body: {exc}") from None
    state.stats.record(endpoint, body)
    if body is None:
        raise ApiError(400, "missing request body")
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def require_model(state: DoubleState, body: dict[str, Any]) -> ModelRecord:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model is required")
    model = state.find_model(name)
    if model is None:
        raise not_found(name)
    return model


def int_option(value: Any, what: str) -> int | None:
    """A count such as num_predict or max_tokens; None when absent; negative means no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{what} must be an integer, got {value!r}")
    return None if value < 0 else value


def json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json; charset=utf-8")


@dataclass
class Plan:
    """One answer decided up front: its tokens, why it ends, and which fault (if any) hits it."""

    model: ModelRecord
    tokens: list[str]
    done_reason: str
    prompt_tokens: int
    fault: str | None
    cut_at: int  # tokens sent before a cut or an error line
    started_ns: int = field(default_factory=time.perf_counter_ns)
    eval_started_ns: int = 0

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def durations(self) -> dict[str, int]:
        """Ollama's timing fields, in nanoseconds, measured on the double's own clock."""
        end = time.perf_counter_ns()
        eval_ns = max(end - (self.eval_started_ns or end), len(self.tokens) * 1_000)
        return {
            "total_duration": end - self.started_ns + LOAD_DURATION_NS,
            "load_duration": LOAD_DURATION_NS,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": self.prompt_tokens * PROMPT_EVAL_NS_PER_TOKEN,
            "eval_count": len(self.tokens),
            "eval_duration": eval_ns,
        }


def plan_answer(
    state: DoubleState,
    model: ModelRecord,
    prompt: str,
    *,
    limit: int | None,
    fmt: Any,
    seed: Any,
    stop: Iterable[str] = (),
) -> Plan:
    """Decide the answer: deterministic tokens from (model, prompt, seed), capped by `limit`."""
    natural = state.knobs.tokens
    count = natural if limit is None else min(natural, limit)
    key = seed_of(model.name, prompt, "" if seed is None else str(seed))
    if state.knobs.ignore_format:
        fmt = None
    if fmt == "json":
        tokens = json_mode_tokens(key, count)
    elif isinstance(fmt, dict):
        tokens = schema_tokens(key, count, fmt)
    else:
        tokens = plain_tokens(key, count)
    done_reason = "length" if limit is not None and limit < natural else "stop"
    stops = [s for s in stop if s]
    for i, token in enumerate(tokens):
        if any(s in token for s in stops):
            tokens, done_reason = tokens[:i], "stop"
            break
    fault = state.take_fault()
    return Plan(
        model=model,
        tokens=tokens,
        done_reason=done_reason,
        prompt_tokens=count_prompt_tokens(prompt),
        fault=fault,
        cut_at=min(state.knobs.die_after_tokens, len(tokens)),
    )


async def before_answer(state: DoubleState, fault: str | None) -> None:
    """Faults that strike before any byte goes out: hang, full queue, plain failure."""
    if fault == "hang":
        await state.release.wait()
        raise ApiError(503, "request released by /_control/reset")
    if fault == "queue_full":
        raise ApiError(503, QUEUE_FULL_MESSAGE)
    if fault == "fail":
        raise ApiError(state.knobs.fail_status, "injected failure (fail_next)")


async def paced_tokens(state: DoubleState, plan: Plan) -> AsyncIterator[str]:
    """Yield the plan's tokens `token_delay` apart; stop early for an error line, cut for a die."""
    plan.eval_started_ns = time.perf_counter_ns()
    stop_at = plan.cut_at if plan.fault in ("die_mid_stream", "error_line") else len(plan.tokens)
    for i, token in enumerate(plan.tokens[:stop_at]):
        if i and state.knobs.token_delay > 0:
            await asyncio.sleep(state.knobs.token_delay)
        yield token
    if plan.fault == "die_mid_stream":
        raise StreamCut(f"die_mid_stream after {stop_at} tokens")


async def wait_for_whole_answer(state: DoubleState, plan: Plan) -> None:
    """A non-streamed answer takes as long as its stream would have (one sleep, not n)."""
    plan.eval_started_ns = time.perf_counter_ns()
    if state.knobs.token_delay > 0 and len(plan.tokens) > 1:
        await asyncio.sleep(state.knobs.token_delay * (len(plan.tokens) - 1))


def cut_response(payload: bytes, media_type: str) -> StreamingResponse:
    """A non-streamed answer that dies half-way: Content-Length promises more than is sent."""

    async def half_then_cut() -> AsyncIterator[bytes]:
        yield payload[: len(payload) // 2]
        raise StreamCut("die_mid_stream in a non-streamed answer")

    return StreamingResponse(half_then_cut(), media_type=media_type, headers={"content-length": str(len(payload))})


async def tracked(state: DoubleState, lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Count streams that ran to their end and those the client abandoned."""
    finished = cut = False
    try:
        async for line in lines:
            yield line
        finished = True
    except StreamCut:
        cut = True  # already counted under faults
        raise
    finally:
        if finished:
            state.stats.streams_completed += 1
        elif not cut:
            state.stats.streams_aborted += 1
