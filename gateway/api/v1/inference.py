"""POST /v1/chat/completions, /v1/completions, /v1/embeddings: each one call into the inference pipeline
(gateway/pipeline/inference.py). A request's `model` is a route (a sticky variant is chosen, with its
fallbacks) or a model."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.contract import AUTHENTICATED, WITH_BODY, errors, json_body, ok
from gateway.api.deps import pipeline
from gateway.pipeline.inference import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDING
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

# 404: no such model or route; 502/503/504: the backends failed, are busy or did not answer in time.
router = APIRouter(prefix="/v1", tags=["inference"], responses=errors(*AUTHENTICATED, *WITH_BODY, 404, 502, 503, 504))
ANSWER = "The answer (JSON), or an SSE stream (text/event-stream) with `stream: true`."
STREAMED = ok({"description": ANSWER, "content": {"application/json": {}, "text/event-stream": {}}})


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    responses=STREAMED,
    openapi_extra=json_body(ChatCompletionRequest, "OpenAI's chat completion request; other fields pass through."),
)
async def chat_completions(request: Request) -> Response:
    return await pipeline(request).serve(request, CHAT_COMPLETIONS)


@router.post(
    "/completions",
    summary="Create a text completion (OpenAI-compatible)",
    responses=STREAMED,
    openapi_extra=json_body(CompletionRequest, "OpenAI's completion request (one prompt); other fields pass through."),
)
async def completions(request: Request) -> Response:
    return await pipeline(request).serve(request, COMPLETIONS)


@router.post(
    "/embeddings",
    summary="Create embeddings (OpenAI-compatible)",
    openapi_extra=json_body(EmbeddingRequest, "OpenAI's embeddings request (text input)."),
)
async def embeddings(request: Request) -> Response:
    return await pipeline(request).serve(request, EMBEDDING)
