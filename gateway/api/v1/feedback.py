"""POST /v1/feedback: rate, score, comment on or correct an answer, by its request id
(gateway/pipeline/feedback.py). 201 when the answer is known, 202 when it is kept unjoined."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.contract import AUTHENTICATED, WITH_BODY, errors, json_body, ok
from gateway.api.deps import PrincipalDep, feedback_desk, parse_body
from gateway.api.responses import json_response
from gateway.protocol.feedback import FeedbackRequest

router = APIRouter(prefix="/v1", tags=["feedback"])


@router.post(
    "/feedback",
    name="give_feedback",
    summary="Rate, score, comment on or correct an answer, by its request id",
    status_code=201,
    responses=ok({"description": "Kept, joined to the captured answer."}, 201)
    | ok({"description": "Kept; no captured answer with that request id (yet)."}, 202)
    | errors(*AUTHENTICATED, *WITH_BODY, 404),  # 404: `model` names one no backend serves
    openapi_extra=json_body(FeedbackRequest, "At least one of rating, score, comment, correction."),
)
async def feedback(request: Request, principal: PrincipalDep) -> Response:
    if not principal.scopes & {"inference", "reviewer", "admin"}:
        principal.require_scope("inference")  # 403 naming the scope a client key needs
    body = await parse_body(request, FeedbackRequest)
    answer, joined = await feedback_desk(request).give(principal, body)
    return json_response(answer, status_code=201 if joined else 202)
