"""POST /v1/chat/completions, /v1/completions, /v1/embeddings: thin handlers over the policy and serving.

A request's `model` is a route (a sticky variant is chosen, with its fallbacks) or a model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.background import BackgroundTask
from starlette.responses import Response

from gateway.access_log import current_record
from gateway.deps import PrincipalDep, parse_body, policy, service, targeting
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.routes.shadow import ShadowJob
from gateway.routes.targeting import Target
from gateway.serving import CHAT, COMPLETION, run_after

router = APIRouter(prefix="/v1", tags=["inference"])


async def _target(request: Request, principal: PrincipalDep, req: Any) -> tuple[Target, Any]:
    principal.require_scope("inference")
    target, req = await targeting(request).target(request, principal, req)
    current_record().model = target.model  # for the access log and feedback, even when no backend is called
    return target, req


def _shadow(request: Request, target: Target, req: Any, response: Response) -> Response:
    """Mirror a share of a route's answered requests to its shadow candidate, after the answer."""
    shadow = target.route.spec.shadow if target.route is not None else None
    mirror = request.app.state.shadow
    if shadow is not None and response.status_code == 200 and mirror.wants(shadow.percent):
        job = ShadowJob(route=target.public, model=shadow.model, request_id=request.state.request_id,
                        req=req.model_copy(update={"stream": False, "stream_options": None}))
        run_after(response, BackgroundTask(mirror.offer, job))
    return response


@router.post("/chat/completions", summary="Create a chat completion (OpenAI-compatible)")
async def chat_completions(request: Request, principal: PrincipalDep) -> Response:
    req = await parse_body(request, ChatCompletionRequest)
    target, req = await _target(request, principal, req)
    response = await policy(request).serve(request, principal, endpoint="chat", req=req, target=target,
                                           call=lambda t: service(request).generate(CHAT, req, target.models, t))
    return _shadow(request, target, req, response)


@router.post("/completions", summary="Create a text completion (OpenAI-compatible)")
async def completions(request: Request, principal: PrincipalDep) -> Response:
    req = await parse_body(request, CompletionRequest)
    target, req = await _target(request, principal, req)
    response = await policy(request).serve(request, principal, endpoint="completions", req=req, target=target,
                                           call=lambda t: service(request).generate(COMPLETION, req, target.models, t))
    return _shadow(request, target, req, response)


@router.post("/embeddings", summary="Create embeddings (OpenAI-compatible)")
async def embeddings(request: Request, principal: PrincipalDep) -> Response:
    req = await parse_body(request, EmbeddingRequest)
    target, req = await _target(request, principal, req)
    return await policy(request).serve(request, principal, endpoint="embeddings", req=req, target=target,
                                       call=lambda t: service(request).embed(req, target.models, t))
