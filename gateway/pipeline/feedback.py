"""Feedback on an answer, joined to it by its request id: `rating` (up/down), `score` (0..1),
`comment`, and `correction` (the answer the model should have given: a demonstration the trainer learns
from). One body may carry several; each is kept as its own row in the store.

Feedback has an owner. The answer is found in this replica's memory of recent requests, else in the
inference log (any replica captured it); only the key that made the request (or a `reviewer` or `admin`
key) can rate or correct it. Anyone else's feedback, and feedback on a request found nowhere, is kept as
`unverified` and changes nothing: no route signal, no metric of the model, never a training target. It
is answered exactly like feedback on an unknown request (202, `joined: false`, model `unknown`), so it
tells the sender nothing about other keys' requests.

An answer has one rating: a new one replaces the old (ratings.py), and the route's guard counts rated
requests and the distinct users behind them. Feedback costs a request of the sender's RPM. Comment and
correction texts go to the database only, never to the log or a metric label.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.limits import KeyLimits, KeyRateLimiter
from gateway.access.principal import Principal
from gateway.model_routes.ratings import Ratings
from gateway.observability.access_log import RecentRequests
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.protocol.feedback import FeedbackRequest
from gateway.replicas.pool import BackendPool
from gateway.state.redis import RedisUnavailable
from gateway.store.queries import inference_of, keep_feedback

log = logging.getLogger("gateway.feedback")
UNKNOWN = "unknown"  # the metric label of feedback on a request no store knows
STORE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Rated:
    """The answer the feedback is about, as far as it is known."""

    public: str  # what the client asked for (route or model): the metric's `model` label
    variant: str  # the model that answered
    route: str | None = None
    route_version: int | None = None
    joined: bool = True
    owner: str | None = None  # who sent the request: the principal's subject (recent memory)
    owner_key: str | None = None  # ... or its key id (the inference log)
    rater: str | None = None  # the user the request's rating counts as


NOWHERE = Rated(public=UNKNOWN, variant=UNKNOWN, joined=False)


class FeedbackDesk:
    def __init__(
        self,
        *,
        recent: RecentRequests,
        engine: AsyncEngine,
        pool: BackendPool,
        ratings: Ratings,
        limiter: KeyRateLimiter,
        metrics: GatewayMetrics,
        failures: FailureLog,
    ) -> None:
        self.recent = recent
        self.engine = engine
        self.pool = pool
        self.ratings = ratings
        self.limiter = limiter
        self.metrics = metrics
        self.failures = failures

    async def give(self, principal: Principal, body: FeedbackRequest) -> tuple[dict[str, Any], bool]:
        """Record the feedback; returns the answer's body and whether it joined a request of the sender's."""
        if principal.rpm:  # RateLimited (429) when the sender is over its requests per minute
            await self.limiter.reserve(principal.subject, KeyLimits(rpm=principal.rpm), 0)
        rated = await self._rated(body, principal)
        role = _role(principal, rated)
        if role == "unverified":
            rated = NOWHERE
        if body.rating is not None:
            counted = role == "unverified" or await self._rate(body.request_id, body.rating, rated)
            if counted:
                self.metrics.feedback.labels(rated.public, rated.variant, body.rating).inc()
        kinds = [kind for kind, _, _ in body.items()]
        for kind in kinds:
            self.metrics.feedback_items.labels(kind).inc()
        stored = await self._keep(body, principal.key_id, role)
        log.info(
            {
                "event": "feedback",
                "request_id": body.request_id,
                "model": rated.variant,
                "kinds": kinds,
                "rating": body.rating,
                "key_id": principal.key_id,
                "role": role,
                "stored": stored,
            }
        )
        answer: dict[str, Any] = {
            "object": "feedback",
            "request_id": body.request_id,
            "model": rated.variant,
            "kinds": kinds,
            "joined": rated.joined,
            "stored": stored,
        }
        if body.rating is not None:
            answer["rating"] = body.rating
        return answer, rated.joined

    async def _rate(self, request_id: str, rating: str, rated: Rated) -> bool:
        """The request's rating (replacing one before); False when it is the same as before (nothing to count)."""
        try:
            change = await self.ratings.rate(
                request_id,
                rating,
                route=rated.route,
                version=rated.route_version,
                variant=rated.variant,
                rater=rated.rater or rated.owner or "-",
            )
        except RedisUnavailable:
            return True  # logged and counted where it failed; the rating is still stored and counted here
        return change != "same"

    async def _rated(self, body: FeedbackRequest, principal: Principal) -> Rated:
        record = self.recent.record_of(body.request_id)
        if record is not None and record.model is not None:
            return Rated(
                public=record.route or record.model,
                variant=record.model,
                route=record.route,
                route_version=record.route_version,
                owner=record.owner,
                owner_key=record.key_id,
                rater=record.rater,
            )
        found = await self._from_store(body.request_id)
        if found is not None:
            return found
        if body.model is not None and _role(principal, NOWHERE) != "unverified":
            model = await self.pool.resolve(body.model)  # 404 for a model the gateway does not serve
            return Rated(public=model, variant=model)
        return NOWHERE

    async def _from_store(self, request_id: str) -> Rated | None:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                row = await inference_of(self.engine, request_id)
        except Exception as exc:  # noqa: BLE001 - the database being down must not fail a vote
            self.failures.record("feedback_lookup", exc)
            return None
        if row is None:
            return None
        return Rated(
            public=row["model"],
            variant=row["variant"],
            route=row["route"],
            route_version=row["route_version"],
            owner_key=row["key_id"],
            rater=row["key_id"],
        )

    async def _keep(self, body: FeedbackRequest, key_id: str | None, role: str) -> bool:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                await keep_feedback(self.engine, body.request_id, body.items(), key_id=key_id, role=role)
            return True
        except Exception as exc:  # noqa: BLE001 - still counted in metrics; the answer says it was not stored
            self.failures.record("feedback_store", exc)
            return False


def _role(principal: Principal, rated: Rated) -> str:
    """How the sender stands to the answer: `admin` and `reviewer` keys judge any answer; the `owner` is the
    key that made the request; anyone else's feedback is `unverified`."""
    if "admin" in principal.scopes:
        return "admin"
    if "reviewer" in principal.scopes:
        return "reviewer"
    mine = (rated.owner is not None and rated.owner == principal.subject) or (
        rated.owner_key is not None and rated.owner_key == principal.key_id
    )
    return "owner" if rated.joined and mine else "unverified"
