"""POST /v1/feedback: a user's thumbs up/down on an answer, joined to it by its request id.

The model comes from this replica's memory of recent requests (`RecentRequests`); behind a load
balancer the vote may reach another replica, so the caller may name the model instead, which
must be one the gateway serves (metric labels stay bounded). Counted in
`gateway_feedback_total{model,rating}`; the comment goes to the log, never to a metric label.
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.access_log import RecentRequests
from gateway.deps import PrincipalDep, parse_body, pool
from gateway.errors import ClientError
from gateway.serving import json_response

router = APIRouter(prefix="/v1", tags=["feedback"])
log = logging.getLogger("gateway.feedback")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                            description="The X-Request-ID of the answer being rated.")
    rating: Literal["up", "down"] = Field(description="Thumbs up or down.")
    comment: str | None = Field(None, max_length=2000, description="Optional free text, logged, not counted.")
    model: str | None = Field(None, description="The model that answered, when this replica may not know it.")


class UnknownRequest(ClientError):
    status = 404
    code = "request_not_found"


@router.post("/feedback", summary="Rate an answer (thumbs up/down) by its request id")
async def feedback(request: Request, principal: PrincipalDep) -> Response:
    principal.require_scope("inference")
    body = await parse_body(request, FeedbackRequest)
    recent: RecentRequests = request.app.state.recent_requests
    record = recent.record_of(body.request_id)
    if record is None or record.model is None:
        if body.model is None:
            raise UnknownRequest(f"no recent request with id {body.request_id!r} on this gateway; "
                                 "send the model that answered as 'model'")
        model = await pool(request).resolve(body.model)  # 404 for a model the gateway does not serve
        public = model
    else:
        model, public = record.model, record.route or record.model
        if record.route is not None and record.route_version is not None:
            request.app.state.policy.accounting.route_stats.record_feedback(
                record.route, record.route_version, model, body.rating)
            await request.app.state.policy.accounting.flush()
    request.app.state.metrics.feedback.labels(public, model, body.rating).inc()
    log.info({"event": "feedback", "request_id": body.request_id, "model": model, "rating": body.rating,
              "key_id": principal.key_id, "comment": body.comment})
    return json_response({"object": "feedback", "request_id": body.request_id, "model": model,
                          "rating": body.rating}, status_code=201)
