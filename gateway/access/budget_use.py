"""How much of its monthly token budget each key has used, for /metrics and the budget alerts.

Every `budget_metric_interval_s` the keys that have a budget are listed and their month counters read in
one round trip (the counters the limiter keeps: reservations included, so the share leads the settled
usage by at most the requests in flight). Cardinality is bounded: only keys with a budget, and at most
`budget_metric_max_keys` of them, those nearest their budget first; the others are counted, not named.
Revoked and expired keys are left out (nobody is served on them). The series carry the month, so an
alert about one month is a new alert the next month (Alertmanager notifies it again). Every gateway
process exports the same values, so the alert rules take the max over processes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.access.calendar import utc_date
from gateway.access.keys import KeyStore
from gateway.access.limits import KeyRateLimiter
from gateway.background import cancel_and_wait, every
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.state.redis import RedisUnavailable


@dataclass(frozen=True, slots=True)
class BudgetUse:
    key_id: str
    name: str
    owner: str
    used: int
    budget: int
    refused: bool  # a request was refused for the budget this month

    @property
    def ratio(self) -> float:
        """The share used; at least 1 once a request was refused for the budget (its last estimate did not fit)."""
        share = self.used / self.budget
        return max(share, 1.0) if self.refused else share


async def budget_use(
    keys: KeyStore, limiter: KeyRateLimiter, *, limit: int, now: float | None = None
) -> tuple[list[BudgetUse], int]:
    """The `limit` keys with a budget nearest to it (highest share first), and how many others were left out."""
    now = time.time() if now is None else now
    budgeted = [k for k in await keys.list() if k.monthly_token_budget and k.is_active(now)]
    used = await limiter.budget_used([k.id for k in budgeted], now=now)
    rows = []
    for k in budgeted:
        tokens, refused = used[k.id]
        rows.append(BudgetUse(k.id, k.name, k.owner, tokens, k.monthly_token_budget or 1, refused))
    rows.sort(key=lambda row: row.ratio, reverse=True)
    return rows[:limit], max(0, len(rows) - limit)


class BudgetWatch:
    """Keeps gateway_key_budget_used_ratio current, from start to stop."""

    def __init__(
        self,
        keys: KeyStore,
        limiter: KeyRateLimiter,
        metrics: GatewayMetrics,
        failures: FailureLog,
        *,
        interval_s: float,
        max_keys: int,
    ) -> None:
        self.keys, self.limiter, self.metrics, self.failures = keys, limiter, metrics, failures
        self.interval_s, self.max_keys = interval_s, max_keys
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        now = time.time()
        rows, unexported = await budget_use(self.keys, self.limiter, limit=self.max_keys, now=now)
        month = utc_date("%Y-%m", now)
        self.metrics.show_budget_use([(r.key_id, r.name, r.owner, r.ratio) for r in rows], month, unexported)

    async def start(self) -> None:
        try:
            await self.refresh()
        except RedisUnavailable:
            pass  # counted by the Redis circuit; the next round tries again
        self._task = every(
            self.interval_s, self.refresh, name="budget_metric", failures=self.failures, quiet=(RedisUnavailable,)
        )

    async def aclose(self) -> None:
        await cancel_and_wait([self._task])
