"""/admin/inferences: read the inference log (reviewers and admins), and erase everything it holds of one
API key (admins; privacy requests)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from gateway.api.contract import AUTHENTICATED, errors
from gateway.api.deps import AdminDep, ReviewerDep, store
from gateway.api.responses import json_response
from gateway.errors import ClientError, GatewayError, InvalidRequest
from gateway.protocol.identifiers import KEY_ID_PATTERN, REQUEST_ID_PATTERN
from gateway.store.queries import InferenceFilter, erase_key, feedback_of, inference_of, list_inferences

router = APIRouter(prefix="/admin/inferences", tags=["admin"], responses=errors(*AUTHENTICATED, 400))

NAME = Annotated[str | None, Query(min_length=1, max_length=200)]
RequestId = Annotated[str, Path(pattern=REQUEST_ID_PATTERN, description="The answer's X-Request-ID.")]


class StoreUnavailable(GatewayError):
    status = 503
    code = "store_unavailable"


class InferenceNotFound(ClientError):
    status = 404
    code = "inference_not_found"


def unavailable(request: Request, what: str, exc: Exception) -> StoreUnavailable:
    """The database is down: recorded, and said so (the caller retries)."""
    store(request).failures.record(what, exc)
    return StoreUnavailable(f"the inference store is unavailable ({type(exc).__name__}); retry later")


def cursor_of(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"i{row_id}".encode()).decode().rstrip("=")


def position(cursor: str | None) -> int | None:
    """The row id a cursor points after; 400 naming `cursor` for one this API did not give."""
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith("i") and text[1:].isdigit():
            return int(text[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise InvalidRequest("cursor is not one this API returned (pass next_cursor as it came)", param="query.cursor")


def utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC (the log's times are UTC)."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def shown(row: dict[str, Any]) -> dict[str, Any]:
    """A row for the API: times as ISO 8601, the table's internal id left out (column names as plain str:
    SQLAlchemy's are a str subclass orjson refuses as keys)."""
    out = {str(k): v for k, v in row.items() if k != "id"}
    if isinstance(out.get("created_at"), datetime):
        out["created_at"] = out["created_at"].isoformat()
    return out


async def captured(request: Request, request_id: str) -> dict[str, Any]:
    """One captured inference for a reader: the row with its `feedback` history and its `judge` results; 404
    when there is none, 503 when the store is down."""
    engine = store(request).engine
    try:
        row = await inference_of(engine, request_id)
        notes = await feedback_of(engine, request_id) if row is not None else []
    except Exception as exc:  # noqa: BLE001 - the database is down: say so
        raise unavailable(request, "inference_of", exc) from None
    if row is None:
        raise InferenceNotFound(f"no captured inference with request id {request_id!r}", param="request_id")
    return {
        **shown(row),
        "feedback": [shown(n) for n in notes if n["kind"] != "judge"],
        "judge": [shown(n) for n in notes if n["kind"] == "judge"],
    }


class InferenceQuery(BaseModel):
    """Which captured inferences to list (each filter optional), and where the page starts."""

    route: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    variant: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    model: Annotated[str | None, Field(min_length=1, max_length=200)] = None
    key_id: Annotated[str | None, Field(pattern=KEY_ID_PATTERN)] = None
    since: datetime | None = Field(None, description="ISO 8601; captured at or after")
    until: datetime | None = Field(None, description="ISO 8601; captured before")
    rating: Literal["up", "down"] | None = Field(None, description="its current rating")
    has_correction: bool | None = Field(None, description="a correction was written for it")
    format_failed: bool | None = Field(None, description="it broke the format the request asked for")
    judge_below: float | None = Field(None, ge=0, le=1, description="a judge scored it under this")
    cursor: str | None = Field(None, max_length=64, description="next_cursor of the previous page")

    def wanted(self) -> InferenceFilter:
        since, until = utc(self.since), utc(self.until)
        if since is not None and until is not None and since >= until:
            raise InvalidRequest("since must be before until", param="query.since")
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


async def inference_page(
    request: Request, query: InferenceQuery, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of matching inferences, newest first, and the cursor of the next page (None at the end)."""
    wanted, after = query.wanted(), position(query.cursor)
    try:
        rows = await list_inferences(store(request).engine, wanted, before_id=after, limit=limit + 1)
    except Exception as exc:  # noqa: BLE001 - the database is down: say so
        raise unavailable(request, "list_inferences", exc) from None
    page = rows[:limit]
    return [shown(row) for row in page], cursor_of(page[-1]["id"]) if len(rows) > limit else None


@router.get("", name="list_inferences", summary="List captured inferences, newest first, with filters and a cursor")
async def listing(
    request: Request,
    _: ReviewerDep,
    query: Annotated[InferenceQuery, Query()],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> Response:
    data, following = await inference_page(request, query, limit)
    return json_response({"object": "list", "data": data, "next_cursor": following})


@router.get(
    "/{request_id}",
    name="show_inference",
    summary="One captured inference: request, answer, timings, feedback and judge results",
    responses=errors(404),
)
async def detail(
    request: Request,
    _: ReviewerDep,
    request_id: RequestId,
) -> Response:
    return json_response({"object": "inference", **await captured(request, request_id)})


@router.delete("", name="erase_key_inferences", summary="Delete every captured inference and feedback of one key")
async def erase(
    request: Request,
    _: AdminDep,
    key_id: Annotated[str, Query(pattern=KEY_ID_PATTERN)],
) -> Response:
    try:
        deleted = await erase_key(store(request).engine, key_id)
    except Exception as exc:  # noqa: BLE001 - the database is down: say so, and the caller retries
        raise unavailable(request, "erase_key", exc) from None
    return json_response({"object": "erasure", "key_id": key_id, "deleted": deleted})
