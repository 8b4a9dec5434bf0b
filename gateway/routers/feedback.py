"""POST /v1/feedback: what a user says about an answer, joined to it by its request id.

Kinds: `rating` (up/down, as before), `score` (0..1), `comment`, and `correction` (the answer the model
should have given: a demonstration the trainer learns from). One body may carry several; each is kept
as its own row in the store.

The answer is found in this replica's memory of recent requests, else in the inference log (any
replica captured it), else through the `model` the caller names. Feedback on a request found nowhere
is still kept and counted (answered 202, `joined: false`). A rating on a routed answer is also a
signal for the route's guard. Comment and correction texts go to the database only, never to the log
or a metric label.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.responses import Response

from gateway.access_log import RecentRequests
from gateway.deps import PrincipalDep, parse_body, pool
from gateway.serving import json_response
from gateway.store.queries import add_feedback, inference_of

router = APIRouter(prefix="/v1", tags=["feedback"])
log = logging.getLogger("gateway.feedback")
UNKNOWN = "unknown"  # the metric label of feedback on a request no store knows
STORE_TIMEOUT_S = 2.0
Kind = Literal["rating", "score", "comment", "correction"]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$",
                            description="The X-Request-ID of the answer this is about.")
    kind: Kind | None = Field(None, description="Optional: which of the fields below this is (then required).")
    rating: Literal["up", "down"] | None = Field(None, description="Thumbs up or down.")
    score: float | None = Field(None, ge=0, le=1, description="A grade from 0 (worst) to 1 (best).")
    comment: str | None = Field(None, max_length=2000, description="Free text, kept in the store.")
    correction: str | None = Field(None, min_length=1, max_length=20000,
                                   description="The answer the model should have given.")
    model: str | None = Field(None, description="The model that answered, when no gateway kept the request.")

    @model_validator(mode="after")
    def _something(self) -> "FeedbackRequest":
        given = [k for k in ("rating", "score", "comment", "correction") if getattr(self, k) is not None]
        if not given:
            raise ValueError("give at least one of rating, score, comment, correction")
        if self.kind is not None and self.kind not in given:
            raise ValueError(f"kind is {self.kind!r} but {self.kind!r} is missing")
        return self

    def items(self) -> list[tuple[str, float | None, str | None]]:
        """(kind, value, text) rows: rating up = 1, down = 0."""
        out: list[tuple[str, float | None, str | None]] = []
        if self.rating is not None:
            out.append(("rating", 1.0 if self.rating == "up" else 0.0, None))
        if self.score is not None:
            out.append(("score", self.score, None))
        if self.comment is not None:
            out.append(("comment", None, self.comment))
        if self.correction is not None:
            out.append(("correction", None, self.correction))
        return out


@dataclass(frozen=True, slots=True)
class Rated:
    """The answer the feedback is about, as far as it is known."""

    public: str  # what the client asked for (route or model): the metric's `model` label
    variant: str  # the model that answered
    route: str | None = None
    route_version: int | None = None
    joined: bool = True


async def _from_store(request: Request, request_id: str) -> Rated | None:
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            row = await inference_of(request.app.state.store.engine, request_id)
    except Exception as exc:  # noqa: BLE001 - the database being down must not fail a vote
        log.warning({"event": "feedback_lookup_failed", "error": type(exc).__name__})
        return None
    if row is None:
        return None
    return Rated(public=row["model"], variant=row["variant"], route=row["route"], route_version=row["route_version"])


async def _rated(request: Request, body: FeedbackRequest) -> Rated:
    recent: RecentRequests = request.app.state.recent_requests
    record = recent.record_of(body.request_id)
    if record is not None and record.model is not None:
        return Rated(public=record.route or record.model, variant=record.model, route=record.route,
                     route_version=record.route_version)
    found = await _from_store(request, body.request_id)
    if found is not None:
        return found
    if body.model is not None:
        model = await pool(request).resolve(body.model)  # 404 for a model the gateway does not serve
        return Rated(public=model, variant=model)
    return Rated(public=UNKNOWN, variant=UNKNOWN, joined=False)


async def _keep(request: Request, body: FeedbackRequest, key_id: str | None) -> bool:
    engine = request.app.state.store.engine
    try:
        async with asyncio.timeout(STORE_TIMEOUT_S):
            for kind, value, text in body.items():
                await add_feedback(engine, request_id=body.request_id, kind=kind, value=value, text=text,
                                   key_id=key_id)
        return True
    except Exception as exc:  # noqa: BLE001 - still counted in metrics; the answer says it was not stored
        log.warning({"event": "feedback_not_stored", "error": type(exc).__name__})
        return False


@router.post("/feedback", summary="Rate, score, comment on or correct an answer, by its request id")
async def feedback(request: Request, principal: PrincipalDep) -> Response:
    principal.require_scope("inference")
    body = await parse_body(request, FeedbackRequest)
    rated = await _rated(request, body)
    if body.rating is not None:
        if rated.route is not None and rated.route_version is not None:  # the guard's thumbs signal
            accounting = request.app.state.policy.accounting
            accounting.route_stats.record_feedback(rated.route, rated.route_version, rated.variant, body.rating)
            await accounting.flush()
        request.app.state.metrics.feedback.labels(rated.public, rated.variant, body.rating).inc()
    kinds = [kind for kind, _, _ in body.items()]
    for kind in kinds:
        request.app.state.store.metrics.feedback.labels(kind).inc()
    stored = await _keep(request, body, principal.key_id)
    log.info({"event": "feedback", "request_id": body.request_id, "model": rated.variant, "kinds": kinds,
              "rating": body.rating, "key_id": principal.key_id, "joined": rated.joined, "stored": stored})
    answer = {"object": "feedback", "request_id": body.request_id, "model": rated.variant, "kinds": kinds,
              "joined": rated.joined, "stored": stored}
    if body.rating is not None:
        answer["rating"] = body.rating
    return json_response(answer, status_code=201 if rated.joined else 202)
