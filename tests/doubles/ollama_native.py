"""Ollama's native inference endpoints: /api/chat, /api/generate, /api/embed, /api/embeddings.

Streams are NDJSON (`application/x-ndjson`): one object per token with `done: false`, then a
final object with `done: true`, `done_reason` and the counters/durations in nanoseconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.doubles.ollama_serving import (
    ApiError,
    Plan,
    StreamCut,
    before_answer,
    cut_response,
    int_option,
    json_response,
    paced_tokens,
    plan_answer,
    read_json,
    require_model,
    tracked,
    wait_for_whole_answer,
)
from tests.doubles.ollama_state import DoubleState, now_rfc3339, state_of
from tests.doubles.ollama_text import count_prompt_tokens, embedding_for

NDJSON = "application/x-ndjson"
THINKING = "Thinking about it."


def render_chat(messages: list[dict[str, Any]], default_system: str) -> str:
    """The prompt text the double 'sees': one `role: content` line per message."""
    lines = [f"{m.get('role', '')}: {m.get('content') or ''}" for m in messages]
    if default_system and not any(m.get("role") == "system" for m in messages):
        lines.insert(0, f"system: {default_system}")
    return "\n".join(lines)


def check_messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise ApiError(400, "messages must be a list of objects")
    for m in value:
        if not isinstance(m.get("role"), str):
            raise ApiError(400, "every message needs a string role")
        if m.get("content") is not None and not isinstance(m["content"], str):
            raise ApiError(400, "message content must be a string")
    return value


def options_of(body: dict[str, Any], model_params: dict[str, Any]) -> dict[str, Any]:
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "options must be an object")
    return {**model_params, **options}


def stop_list(options: dict[str, Any]) -> list[str]:
    stop = options.get("stop") or []
    return [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]


def load_only_answer(model: str, key: str, reason: str) -> Response:
    """Ollama's reply to a request with no prompt: the model (un)loads, nothing is generated."""
    body: dict[str, Any] = {"model": model, "created_at": now_rfc3339(), key: "", "done": True, "done_reason": reason}
    if key == "message":
        body["message"] = {"role": "assistant", "content": ""}
    return json_response(body)


def chunk(plan: Plan, key: str, text: str, thinking: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": plan.model.name, "created_at": now_rfc3339(), "done": False}
    if key == "message":
        body["message"] = {"role": "assistant", "content": text}
        if thinking is not None:
            body["message"]["thinking"] = thinking
    else:
        body["response"] = text
        if thinking is not None:
            body["thinking"] = thinking
    return body


def final(plan: Plan, key: str, text: str, thinking: str | None) -> dict[str, Any]:
    body = chunk(plan, key, text, thinking)
    body.update(done=True, done_reason=plan.done_reason, **plan.durations())
    return body


async def ndjson_stream(state: DoubleState, plan: Plan, key: str, think: bool) -> AsyncIterator[bytes]:
    if think:
        yield orjson.dumps(chunk(plan, key, "", THINKING)) + b"\n"
    async for token in paced_tokens(state, plan):
        yield orjson.dumps(chunk(plan, key, token)) + b"\n"
    if plan.fault == "error_line":
        yield orjson.dumps({"error": "injected error mid-stream (error_line_next)"}) + b"\n"
        return
    yield orjson.dumps(final(plan, key, "", None)) + b"\n"


async def answer(state: DoubleState, body: dict[str, Any], plan: Plan, key: str) -> Response:
    """Stream (default) or one JSON object, with the plan's fault applied."""
    await before_answer(state, plan.fault)
    think = body.get("think") not in (None, False)
    if body.get("stream", True) is not False:
        lines = tracked(state, ndjson_stream(state, plan, key, think))
        return StreamingResponse(lines, media_type=NDJSON)
    await wait_for_whole_answer(state, plan)
    if plan.fault == "error_line":
        raise ApiError(500, "injected error mid-generation (error_line_next)")
    payload = orjson.dumps(final(plan, key, plan.text, THINKING if think else None))
    if plan.fault == "die_mid_stream":
        return cut_response(payload, "application/json; charset=utf-8")
    return Response(payload, media_type="application/json; charset=utf-8")


def check_format(value: Any) -> Any:
    if value in (None, "", "json") or isinstance(value, dict):
        return value or None
    raise ApiError(400, f'invalid format: {value!r}; use "json" or a JSON schema object')


async def chat(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, "/api/chat")
    messages = check_messages(body.get("messages"))
    model = require_model(state, body)
    fmt = check_format(body.get("format"))
    options = options_of(body, model.parameters)
    state.mark_loaded(model, body.get("keep_alive"))
    if not messages:
        return load_only_answer(model.name, "message", "unload" if model.name not in state.loaded else "load")
    prompt = render_chat(model.messages + messages, model.system)
    plan = plan_answer(
        state,
        model,
        prompt,
        limit=int_option(options.get("num_predict"), "num_predict"),
        fmt=fmt,
        seed=options.get("seed"),
        stop=stop_list(options),
    )
    return await answer(state, body, plan, "message")


async def generate(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, "/api/generate")
    model = require_model(state, body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    fmt = check_format(body.get("format"))
    options = options_of(body, model.parameters)
    state.mark_loaded(model, body.get("keep_alive"))
    if not prompt:
        return load_only_answer(model.name, "response", "unload" if model.name not in state.loaded else "load")
    system = body.get("system") if isinstance(body.get("system"), str) else model.system
    full = f"{system}\n{prompt}" if system else prompt
    if isinstance(body.get("suffix"), str) and body["suffix"]:
        full += "\n" + body["suffix"]
    plan = plan_answer(
        state,
        model,
        full,
        limit=int_option(options.get("num_predict"), "num_predict"),
        fmt=fmt,
        seed=options.get("seed"),
        stop=stop_list(options),
    )
    return await answer(state, body, plan, "response")


def embed_inputs(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise ApiError(400, "input must be a string or a list of strings")


async def embedding_fault(state: DoubleState) -> None:
    """Embeddings are not streamed: a fault is an error answer or a cut (the caller cuts)."""
    fault = state.take_fault()
    await before_answer(state, fault)
    if fault == "error_line":
        raise ApiError(500, "injected error (error_line_next)")
    if fault == "die_mid_stream":
        raise StreamCut("die_mid_stream in an embedding answer")


async def embed(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, "/api/embed")
    inputs = embed_inputs(body.get("input", ""))
    model = require_model(state, body)
    dims = int_option(body.get("dimensions"), "dimensions") or state.embed_dim
    state.mark_loaded(model, body.get("keep_alive"))
    payload = orjson.dumps(
        {
            "model": model.name,
            "embeddings": [embedding_for(text, dims) for text in inputs],
            "total_duration": 1_000_000,
            "load_duration": 0,
            "prompt_eval_count": sum(count_prompt_tokens(t) for t in inputs),
        }
    )
    return await _embedding_answer(state, payload)


async def embeddings_legacy(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, "/api/embeddings")
    model = require_model(state, body)
    prompt = body.get("prompt") or ""
    if not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    state.mark_loaded(model, body.get("keep_alive"))
    vector = embedding_for(prompt, state.embed_dim) if prompt else []
    return await _embedding_answer(state, orjson.dumps({"embedding": vector}))


async def _embedding_answer(state: DoubleState, payload: bytes) -> Response:
    try:
        await embedding_fault(state)
    except StreamCut:
        return cut_response(payload, "application/json; charset=utf-8")
    return Response(payload, media_type="application/json; charset=utf-8")


routes = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings_legacy, methods=["POST"]),
]
