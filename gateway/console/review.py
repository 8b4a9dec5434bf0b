"""The review queue in the browser: what waits (most urgent first, with why), then one answer at a time,
claimed for this reviewer: rate it, comment, or correct it, and the next one comes; skip passes it over
for this session. An answer someone reviewed leaves every reviewer's queue (gateway/pipeline/review.py)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from gateway.api.admin.inferences import RequestId, captured, shown, unavailable
from gateway.api.deps import review
from gateway.console.answers import give_feedback, rating_of
from gateway.console.web import PREFIX, ConsoleRoute, Viewer, form_fields, page, see_other, sessions, viewer
from gateway.store.queries import REVIEW_REASONS

router = APIRouter(prefix=f"{PREFIX}/review", route_class=ConsoleRoute, include_in_schema=False)
Person = Annotated[Viewer, Depends(viewer)]
RouteFilter = Annotated[str | None, Query(max_length=200)]
SHOWN_WAITING = 200


async def _next(request: Request, person: Viewer, route: str | None) -> Response:
    """Claim the next answer for this reviewer and open it; back to the queue when none is left."""
    try:
        item = await review(request).next_for(person.who, route=route, skip=frozenset(person.session.skipped))
    except Exception as exc:  # noqa: BLE001 - the database is down: say so
        raise unavailable(request, "console_review_next", exc) from None
    if item is None:
        return see_other(f"{PREFIX}/review?{urlencode({**({'route': route} if route else {}), 'done': 1})}")
    query = {"reason": item["reason"], **({"route": route} if route else {})}
    return see_other(f"{PREFIX}/review/{item['request_id']}?{urlencode(query)}")


def _route(fields: dict[str, str]) -> str | None:
    """The form's route filter (a route name is at most 200 characters)."""
    return fields.get("route", "")[:200] or None


@router.get("")
async def queue(request: Request, person: Person, route: RouteFilter = None, done: bool = False) -> Response:
    try:
        waiting = [shown(row) for row in await review(request).waiting(route=route or None, limit=SHOWN_WAITING)]
    except Exception as exc:  # noqa: BLE001 - the database is down: say so
        raise unavailable(request, "console_review_queue", exc) from None
    counts = Counter(row["reason"] for row in waiting)
    return page(
        request,
        "review_queue.html",
        person,
        waiting=waiting[:20],
        counts=[(reason, counts.get(reason, 0)) for reason in REVIEW_REASONS],
        total=len(waiting),
        route=route or "",
        done=done,
    )


@router.post("/next")
async def start(request: Request, person: Person) -> Response:
    fields = await form_fields(request, person.session.csrf)
    return await _next(request, person, _route(fields))


@router.get("/{request_id}")
async def item(
    request: Request, person: Person, request_id: RequestId, reason: RouteFilter = None, route: RouteFilter = None
) -> Response:
    answer = await captured(request, request_id)
    shown_reason = reason if reason in REVIEW_REASONS else None
    return page(request, "review_item.html", person, item=answer, reason=shown_reason, route=route or "")


@router.post("/{request_id}")
async def decide(request: Request, person: Person, request_id: RequestId) -> Response:
    """Rate, save or skip this answer, then the next one."""
    fields = await form_fields(request, person.session.csrf)
    route = _route(fields)
    action = fields.get("action", "")
    if action == "skip":
        person.session.skip(request_id)
        await sessions(request).save(person.session_id, person.session)
    else:
        answer = await captured(request, request_id)
        await give_feedback(request, person, answer, fields, rating_of(action))
    return await _next(request, person, route)
