"""/admin/review: the review queue for the people who judge the model (reviewer keys and admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.api.admin.inferences import NAME, shown, unavailable
from gateway.api.contract import AUTHENTICATED, WITH_BODY, errors, ok
from gateway.api.deps import ReviewerDep, parse_body, review
from gateway.api.responses import json_response

router = APIRouter(prefix="/admin/review", tags=["admin"], responses=errors(*AUTHENTICATED, 400))


class NextBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route: str | None = Field(None, min_length=1, max_length=200, description="only this route's answers")
    skip: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=100, description="request ids this reviewer passed over"
    )


@router.get("/queue", name="review_queue", summary="The answers waiting for a person, most urgent first, with why")
async def queue(
    request: Request, _: ReviewerDep, route: NAME = None, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> Response:
    try:
        rows = await review(request).waiting(route=route, limit=limit)
    except Exception as exc:  # noqa: BLE001 - the database is down: say so
        raise unavailable(request, "review_queue", exc) from None
    return json_response({"object": "list", "data": [shown(row) for row in rows]})


@router.post(
    "/next",
    name="claim_review_item",
    summary="Claim the most urgent answer nobody else holds (204 when there is none)",
    responses=ok({"description": "The answer, claimed for ten minutes."})
    | ok({"description": "None waiting."}, 204)
    | errors(*WITH_BODY),
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": NextBody.model_json_schema()}}}},
)
async def next_item(request: Request, principal: ReviewerDep) -> Response:
    body = await parse_body(request, NextBody) if await request.body() else NextBody()
    who = principal.key_id or principal.subject
    try:
        item = await review(request).next_for(who, route=body.route, skip=frozenset(body.skip))
    except Exception as exc:  # noqa: BLE001 - the database is down: say so
        raise unavailable(request, "review_next", exc) from None
    if item is None:
        return Response(status_code=204)
    item["feedback"] = [shown(n) for n in item["feedback"]]
    item["judge"] = [shown(n) for n in item["judge"]]
    return json_response({"object": "review_item", **shown(item)})
