"""POST /v1/chat/completions, /v1/completions, /v1/embeddings: each one call into the inference pipeline
(gateway/pipeline/inference.py). A request's `model` is a route (a sticky variant is chosen, with its
fallbacks) or a model."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import pipeline
from gateway.pipeline.inference import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDING

router = APIRouter(prefix="/v1", tags=["inference"])


@router.post("/chat/completions", summary="Create a chat completion (OpenAI-compatible)")
async def chat_completions(request: Request) -> Response:
    return await pipeline(request).serve(request, CHAT_COMPLETIONS)


@router.post("/completions", summary="Create a text completion (OpenAI-compatible)")
async def completions(request: Request) -> Response:
    return await pipeline(request).serve(request, COMPLETIONS)


@router.post("/embeddings", summary="Create embeddings (OpenAI-compatible)")
async def embeddings(request: Request) -> Response:
    return await pipeline(request).serve(request, EMBEDDING)
