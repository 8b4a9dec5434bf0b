"""Ollama's OpenAI-compatible endpoints (docs/openai.md): /v1/chat/completions, /v1/completions,
/v1/embeddings, /v1/models.

Streams are server-sent events: `data: {chunk}` lines, a last chunk with `finish_reason`, a usage
chunk (empty `choices`) when `stream_options.include_usage` is set, then `data: [DONE]`.
A mid-stream error is a `data: {"error": {...}}` event and no `[DONE]`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.doubles.ollama_native import check_messages, embed_inputs, embedding_fault, render_chat
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
from tests.doubles.ollama_state import DoubleState, state_of
from tests.doubles.ollama_text import count_prompt_tokens, embedding_base64, embedding_for

SSE = "text/event-stream"
FINGERPRINT = "fp_ollama"


def openai_error(status: int, message: str) -> dict[str, Any]:
    """Ollama's compat layer maps status codes to OpenAI error types this way."""
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage(plan: Plan) -> dict[str, int]:
    return {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": len(plan.tokens),
        "total_tokens": plan.prompt_tokens + len(plan.tokens),
    }


def response_format(body: dict[str, Any]) -> Any:
    """OpenAI's response_format -> Ollama's format ("json" or a schema)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return "json"
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or "json"
    return None


def limit_of(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            return int_option(body[key], key)
    return None


def stops_of(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop") or []
    return [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)]


class Completion:
    """The two text endpoints differ only in object names and where the text sits."""

    def __init__(self, chat: bool, plan: Plan) -> None:
        self.chat, self.plan = chat, plan
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(6)
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.plan.model.name,
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }

    def choice(self, text: str, finish: str | None, *, delta: bool) -> dict[str, Any]:
        if not self.chat:
            return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        key = "delta" if delta else "message"
        return {"index": 0, key: {"role": "assistant", "content": text}, "finish_reason": finish}

    def whole(self) -> dict[str, Any]:
        body = self.envelope(self.object, [self.choice(self.plan.text, self.plan.done_reason, delta=False)])
        body["usage"] = usage(self.plan)
        return body

    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self.chat else "text_completion"

    async def events(self, state: DoubleState, include_usage: bool) -> AsyncIterator[bytes]:
        obj = self.chunk_object()
        async for token in paced_tokens(state, self.plan):
            yield sse(self.envelope(obj, [self.choice(token, None, delta=True)]))
        if self.plan.fault == "error_line":
            yield sse(openai_error(500, "injected error mid-stream (error_line_next)"))
            return
        yield sse(self.envelope(obj, [self.choice("", self.plan.done_reason, delta=True)]))
        if include_usage:
            yield sse({**self.envelope(obj, []), "usage": usage(self.plan)})
        yield b"data: [DONE]\n\n"


async def complete(state: DoubleState, body: dict[str, Any], completion: Completion) -> Response:
    plan = completion.plan
    await before_answer(state, plan.fault)
    if body.get("stream"):
        options = body.get("stream_options") or {}
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        return StreamingResponse(tracked(state, completion.events(state, include_usage)), media_type=SSE)
    await wait_for_whole_answer(state, plan)
    if plan.fault == "error_line":
        raise ApiError(500, "injected error mid-generation (error_line_next)")
    payload = orjson.dumps(completion.whole())
    if plan.fault == "die_mid_stream":
        return cut_response(payload, "application/json")
    return Response(payload, media_type="application/json")


async def chat_completions(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, "/v1/chat/completions")
    messages = check_messages(body.get("messages"))
    if not messages:
        raise ApiError(400, "[] is too short - 'messages'")
    model = require_model(state, body)
    state.mark_loaded(model, None)
    plan = plan_answer(
        state,
        model,
        render_chat(model.messages + messages, model.system),
        limit=limit_of(body),
        fmt=response_format(body),
        seed=body.get("seed"),
        stop=stops_of(body),
    )
    return await complete(state, body, Completion(True, plan))


async def completions(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, "/v1/completions")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt is required and must be a string")
    model = require_model(state, body)
    state.mark_loaded(model, None)
    text = prompt + ("\n" + body["suffix"] if isinstance(body.get("suffix"), str) and body["suffix"] else "")
    plan = plan_answer(state, model, text, limit=limit_of(body), fmt=None, seed=body.get("seed"), stop=stops_of(body))
    return await complete(state, body, Completion(False, plan))


async def embeddings(request: Request) -> Response:
    state = state_of(request)
    body = await read_json(request, "/v1/embeddings")
    inputs = embed_inputs(body.get("input"))
    model = require_model(state, body)
    dims = int_option(body.get("dimensions"), "dimensions") or state.embed_dim
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = embedding_for(text, dims)
        data.append(
            {"object": "embedding", "embedding": embedding_base64(vector) if as_base64 else vector, "index": index}
        )
    tokens = sum(count_prompt_tokens(t) for t in inputs)
    payload = orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": model.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )
    try:
        await embedding_fault(state)
    except StreamCut:
        return cut_response(payload, "application/json")
    return Response(payload, media_type="application/json")


def model_entry(name: str, modified_at: str) -> dict[str, Any]:
    owner = name.split("/")[0] if "/" in name else "library"
    return {"id": name, "object": "model", "created": int(time.time()), "owned_by": owner}


async def list_models(request: Request) -> Response:
    state = state_of(request)
    state.stats.record("/v1/models", None)
    return json_response(
        {"object": "list", "data": [model_entry(m.name, m.modified_at) for m in state.models.values()]}
    )


async def get_model(request: Request) -> Response:
    state = state_of(request)
    name = request.path_params["model"]
    model = state.find_model(name)
    if model is None:
        raise ApiError(404, f'model "{name}" not found')
    return json_response(model_entry(model.name, model.modified_at))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]
