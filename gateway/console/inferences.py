"""Captured inferences in the browser: search and filter (the filters of GET /admin/inferences), newest
first, a page at a time; one inference with its conversation, answer, timings, feedback history and judge
results, and the same feedback form as the review queue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from gateway.api.admin.inferences import KEY_ID_PATTERN, captured, cursor_of, position, shown, unavailable, utc
from gateway.api.deps import store
from gateway.console.answers import give_feedback, rating_of
from gateway.console.web import PREFIX, ConsoleRoute, Viewer, form_fields, page, see_other, viewer
from gateway.errors import InvalidRequest
from gateway.store.queries import InferenceFilter, list_inferences

router = APIRouter(prefix=f"{PREFIX}/inferences", route_class=ConsoleRoute, include_in_schema=False)
Person = Annotated[Viewer, Depends(viewer)]
RequestId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
PAGE = 50
Name = Annotated[str | None, Field(min_length=1, max_length=200)]


class Filters(BaseModel):
    """The search form; an empty field is no filter."""

    model_config = ConfigDict(extra="ignore")

    route: Name = None
    variant: Name = None
    model: Name = None
    key_id: Annotated[str | None, Field(min_length=1, max_length=64, pattern=KEY_ID_PATTERN)] = None
    since: datetime | None = None
    until: datetime | None = None
    rating: Literal["up", "down"] | None = None
    has_correction: bool | None = None
    format_failed: bool | None = None
    judge_below: float | None = Field(None, ge=0, le=1)
    cursor: str | None = Field(None, max_length=64)

    def wanted(self) -> InferenceFilter:
        since, until = utc(self.since), utc(self.until)
        if since is not None and until is not None and since >= until:
            raise InvalidRequest("since must be before until")
        return InferenceFilter(
            route=self.route,
            variant=self.variant,
            model=self.model,
            key_id=self.key_id,
            since=since,
            until=until,
            rating=self.rating,
            has_correction=self.has_correction,
            format_failed=self.format_failed,
            judge_below=self.judge_below,
        )


@router.get("")
async def search(request: Request, person: Person) -> Response:
    given = {k: v for k, v in request.query_params.items() if v.strip()}
    try:
        filters = Filters.model_validate(given)
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise InvalidRequest(f"{'.'.join(map(str, problem['loc']))}: {problem['msg']}") from None
    wanted, after = filters.wanted(), position(filters.cursor)
    try:
        rows = await list_inferences(store(request).engine, wanted, before_id=after, limit=PAGE + 1)
    except Exception as exc:  # noqa: BLE001 - the database is down: say so
        raise unavailable(request, "console_inferences", exc) from None
    more = len(rows) > PAGE
    following = {**given, "cursor": cursor_of(rows[PAGE - 1]["id"])} if more else None
    return page(
        request,
        "inferences.html",
        person,
        rows=[shown(row) for row in rows[:PAGE]],
        filters=given,
        following=following,
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
