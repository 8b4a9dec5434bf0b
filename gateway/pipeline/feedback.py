"""Feedback on an answer, joined to it by its request id: `rating` (up/down), `score` (0..1),
`comment`, and `correction` (the answer the model should have given: a demonstration the trainer learns
from). One body may carry several; each is kept as its own row in the store.

The answer is found in this replica's memory of recent requests, else in the inference log (any
replica captured it), else through the `model` the caller names. Feedback on a request found nowhere
is still kept and counted (`joined: false`). A rating on a routed answer is also a signal for the
route's guard. Comment and correction texts go to the database only, never to the log or a metric label.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.access.principal import Principal
from gateway.model_routes.stats import RouteStats
from gateway.observability.access_log import RecentRequests
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.protocol.feedback import FeedbackRequest
from gateway.replicas.pool import BackendPool
from gateway.state.write_behind import WriteBehind
from gateway.store.queries import add_feedback, inference_of

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


class FeedbackDesk:
    def __init__(
        self,
        *,
        recent: RecentRequests,
        engine: AsyncEngine,
        pool: BackendPool,
        route_stats: RouteStats,
        writes: WriteBehind,
        metrics: GatewayMetrics,
        failures: FailureLog,
    ) -> None:
        self.recent = recent
        self.engine = engine
        self.pool = pool
        self.route_stats = route_stats
        self.writes = writes
        self.metrics = metrics
        self.failures = failures

    async def give(self, principal: Principal, body: FeedbackRequest) -> tuple[dict[str, Any], bool]:
        """Record the feedback; returns the answer's body and whether it joined a known request."""
        rated = await self._rated(body)
        if body.rating is not None:
            if rated.route is not None and rated.route_version is not None:  # the guard's thumbs signal
                self.route_stats.record_feedback(rated.route, rated.route_version, rated.variant, body.rating)
                await self.writes.flush()
            self.metrics.feedback.labels(rated.public, rated.variant, body.rating).inc()
        kinds = [kind for kind, _, _ in body.items()]
        for kind in kinds:
            self.metrics.feedback_items.labels(kind).inc()
        stored = await self._keep(body, principal.key_id)
        log.info(
            {
                "event": "feedback",
                "request_id": body.request_id,
                "model": rated.variant,
                "kinds": kinds,
                "rating": body.rating,
                "key_id": principal.key_id,
                "joined": rated.joined,
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

    async def _rated(self, body: FeedbackRequest) -> Rated:
        record = self.recent.record_of(body.request_id)
        if record is not None and record.model is not None:
            return Rated(
                public=record.route or record.model,
                variant=record.model,
                route=record.route,
                route_version=record.route_version,
            )
        found = await self._from_store(body.request_id)
        if found is not None:
            return found
        if body.model is not None:
            model = await self.pool.resolve(body.model)  # 404 for a model the gateway does not serve
            return Rated(public=model, variant=model)
        return Rated(public=UNKNOWN, variant=UNKNOWN, joined=False)

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
            public=row["model"], variant=row["variant"], route=row["route"], route_version=row["route_version"]
        )

    async def _keep(self, body: FeedbackRequest, key_id: str | None) -> bool:
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                for kind, value, text in body.items():
                    await add_feedback(
                        self.engine, request_id=body.request_id, kind=kind, value=value, text=text, key_id=key_id
                    )
            return True
        except Exception as exc:  # noqa: BLE001 - still counted in metrics; the answer says it was not stored
            self.failures.record("feedback_store", exc)
            return False
