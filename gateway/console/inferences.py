"""Captured inferences in the browser: search and filter (the filters of GET /admin/inferences), newest
first, a page at a time; one inference with its conversation, answer, timings, feedback history and judge
results, and the same feedback form as the review queue."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response

from gateway.api.admin.inferences import InferenceQuery, RequestId, captured, inference_page
from gateway.console.answers import give_feedback, rating_of
from gateway.console.web import PREFIX, ConsoleRoute, Viewer, form_fields, page, see_other, viewer
from gateway.errors import InvalidRequest

router = APIRouter(prefix=f"{PREFIX}/inferences", route_class=ConsoleRoute, include_in_schema=False)
Person = Annotated[Viewer, Depends(viewer)]
PAGE = 50


@router.get("")
async def search(request: Request, person: Person) -> Response:
    given = {k: v for k, v in request.query_params.items() if v.strip()}
    try:
        filters = InferenceQuery.model_validate(given)
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise InvalidRequest(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}") from None
    rows, following = await inference_page(request, filters, PAGE)
    return page(
        request,
        "inferences.html",
        person,
        rows=rows,
        filters=given,
        following={**given, "cursor": following} if following else None,
    )


@router.get("/{request_id}")
async def detail(request: Request, person: Person, request_id: RequestId, saved: bool = False) -> Response:
    return page(request, "inference.html", person, item=await captured(request, request_id), saved=saved)


@router.post("/{request_id}")
async def feedback(request: Request, person: Person, request_id: RequestId) -> Response:
    fields = await form_fields(request, person.session.csrf)
    answer = await captured(request, request_id)
    await give_feedback(request, person, answer, fields, rating_of(fields.get("rating")))
    return see_other(f"{PREFIX}/inferences/{request_id}?saved=1")
