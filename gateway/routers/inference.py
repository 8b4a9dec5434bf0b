"""POST /v1/chat/completions, /v1/completions, /v1/embeddings: thin handlers over InferenceService."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.access_log import current_record
from gateway.deps import PrincipalDep, parse_body, policy, pool, service
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.serving import CHAT, COMPLETION

router = APIRouter(prefix="/v1", tags=["inference"])


async def _authorised_model(request: Request, principal: PrincipalDep, name: str) -> str:
    principal.require_scope("inference")
    model = await pool(request).resolve(name)
    principal.require_model(model)
    current_record().model = model  # for the access log and feedback, even when no backend is called
    return model


@router.post("/chat/completions", summary="Create a chat completion (OpenAI-compatible)")
async def chat_completions(request: Request, principal: PrincipalDep) -> Response:
    req = await parse_body(request, ChatCompletionRequest)
    model = await _authorised_model(request, principal, req.model)
    return await policy(request).serve(request, principal, endpoint="chat", req=req, model=model,
                                       call=lambda ticket: service(request).generate(CHAT, req, model, ticket))


@router.post("/completions", summary="Create a text completion (OpenAI-compatible)")
async def completions(request: Request, principal: PrincipalDep) -> Response:
    req = await parse_body(request, CompletionRequest)
    model = await _authorised_model(request, principal, req.model)
    return await policy(request).serve(request, principal, endpoint="completions", req=req, model=model,
                                       call=lambda ticket: service(request).generate(COMPLETION, req, model, ticket))


@router.post("/embeddings", summary="Create embeddings (OpenAI-compatible)")
async def embeddings(request: Request, principal: PrincipalDep) -> Response:
    req = await parse_body(request, EmbeddingRequest)
    model = await _authorised_model(request, principal, req.model)
    return await policy(request).serve(request, principal, endpoint="embeddings", req=req, model=model,
                                       call=lambda ticket: service(request).embed(req, model, ticket))

