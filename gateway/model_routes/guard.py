"""The rollout guard: a canary is judged against the route's stable variant on live signals, then
rolled back at once on a breach, or stepped along its plan once it has served enough without one.

`judge` is pure (signals in, verdict out). `Guardian` runs it on every replica a few times a second for
each route with a guard and a canary, and applies a verdict as a compare-and-set on the route's
version: when several replicas see the same breach, one change wins and the others find it done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.background import cancel_and_wait, every
from gateway.model_routes.spec import TOTAL_WEIGHT, Guard, RouteSpec, StoredRoute, Variant
from gateway.model_routes.stats import RouteStats, VariantStats
from gateway.model_routes.store import RouteConflict, RouteStore
from gateway.model_routes.table import RouteTable
from gateway.observability.failures import FailureLog
from gateway.state.redis import RedisUnavailable

log = logging.getLogger("gateway.routes.guard")


@dataclass(frozen=True)
class Verdict:
    action: str  # "rollback" | "step" | "promote"
    canary: str
    reason: dict[str, Any] = field(default_factory=dict)
    weight: int = 0


@dataclass(frozen=True)
class Signal:
    """One guard rule for one canary: both variants' values, the rule, whether the samples suffice to judge
    it yet (and what they need), and whether the canary breaks it."""

    name: str  # error_rate | ttft_p95 | format | thumbs_down
    stable: float | None
    canary: float | None
    rule: str
    needs: str
    ready: bool
    breached: bool
    samples: dict[str, int]


def signals(guard: Guard, stable: VariantStats, canary: VariantStats) -> list[Signal]:
    """Every rule of the guard, in the order it is judged."""
    sample = {"stable_requests": stable.requests, "canary_requests": canary.requests}
    enough = stable.requests >= guard.min_requests and canary.requests >= guard.min_requests
    each = f"{guard.min_requests} requests each"
    stable_p95, canary_p95 = stable.ttft_quantile(0.95), canary.ttft_quantile(0.95)
    format_ready = enough and min(stable.format_checked, canary.format_checked) >= guard.min_requests
    votes = max(1, guard.min_requests // 10)
    thumbs_ready = (
        enough and min(stable.votes, canary.votes) >= votes and min(stable.raters, canary.raters) >= guard.min_raters
    )
    return [
        Signal(
            "error_rate",
            stable.error_rate,
            canary.error_rate,
            f"canary at most {guard.max_error_rate_delta:g} over the stable",
            each,
            enough,
            enough and canary.error_rate - stable.error_rate > guard.max_error_rate_delta,
            sample,
        ),
        Signal(
            "ttft_p95",
            stable_p95,
            canary_p95,
            f"canary at most {guard.max_ttft_p95_ratio:g} times the stable",
            each,
            enough,
            enough and bool(stable_p95 and canary_p95 and canary_p95 > guard.max_ttft_p95_ratio * stable_p95),
            sample,
        ),
        Signal(
            "format",
            stable.format_failure,
            canary.format_failure,
            f"canary at most {guard.max_format_failure_delta:g} over the stable",
            f"{guard.min_requests} format-checked answers each",
            format_ready,
            format_ready and canary.format_failure - stable.format_failure > guard.max_format_failure_delta,
            {"stable_checked": stable.format_checked, "canary_checked": canary.format_checked, **sample},
        ),
        Signal(
            "thumbs_down",
            stable.thumbs_down_share,
            canary.thumbs_down_share,
            f"canary at most {guard.max_thumbs_down_delta:g} over the stable",
            f"{votes} votes from {guard.min_raters} raters each",
            thumbs_ready,
            thumbs_ready and canary.thumbs_down_share - stable.thumbs_down_share > guard.max_thumbs_down_delta,
            {
                "stable_votes": stable.votes,
                "canary_votes": canary.votes,
                "stable_raters": stable.raters,
                "canary_raters": canary.raters,
                **sample,
            },
        ),
    ]


def _breach(guard: Guard, stable: VariantStats, canary: VariantStats) -> dict[str, Any] | None:
    """The first rule the canary breaks, with both variants' values and samples; None when it keeps all."""
    for signal in signals(guard, stable, canary):
        if signal.breached:
            return {"signal": signal.name, "stable": signal.stable, "canary": signal.canary, **signal.samples}
    return None


def judge(spec: RouteSpec, stats: dict[str, VariantStats], age_s: float) -> Verdict | None:
    """What the guard does with this route now, if anything."""
    guard = spec.guard
    if guard is None:
        return None
    stable = stats.get(spec.stable.served, VariantStats())
    for canary in spec.canaries:
        seen = stats.get(canary.served, VariantStats())
        breach = _breach(guard, stable, seen)
        if breach is not None:
            return Verdict("rollback", canary.served, breach)
        due = seen.requests >= guard.step_after_requests or (guard.step_after_s and age_s >= guard.step_after_s)
        following = [s for s in guard.steps if s > canary.weight]
        if due and following:
            action = "promote" if following[0] >= TOTAL_WEIGHT else "step"
            return Verdict(
                action, canary.served, {"canary_requests": seen.requests, "age_s": round(age_s, 1)}, weight=following[0]
            )
    return None


def rolled_back(spec: RouteSpec, canary: str) -> RouteSpec:
    """The canary at 0 %, its share back to the stable variant."""
    share = next(v.weight for v in spec.variants if v.served == canary)
    return spec.with_weights({canary: 0, spec.stable.served: spec.stable.weight + share})


def stepped(spec: RouteSpec, canary: str, weight: int) -> RouteSpec:
    """The canary at `weight`; the stable variant gives up what it takes. At 100 the canary leads."""
    if weight >= TOTAL_WEIGHT:
        return promoted(spec, canary)
    others = sum(v.weight for v in spec.variants[1:] if v.served != canary)
    return spec.with_weights({canary: weight, spec.stable.served: TOTAL_WEIGHT - weight - others})


def promoted(spec: RouteSpec, model: str) -> RouteSpec:
    """`model` at 100 % and first (the new stable); every other variant kept at 0 % for a rollback."""
    return spec.with_weights({v.served: TOTAL_WEIGHT if v.served == model else 0 for v in spec.variants}, first=model)


def variant_named(spec: RouteSpec, model: str) -> Variant | None:
    return next((v for v in spec.variants if v.served == model or v.model == model), None)


class Guardian:
    def __init__(
        self,
        *,
        table: RouteTable,
        store: RouteStore,
        stats: RouteStats,
        failures: FailureLog,
        on_rollback: Callable[[str, str], None],
        interval_s: float = 0.25,
    ) -> None:
        self.table, self.store, self.stats = table, store, stats
        self.failures = failures
        self.on_rollback = on_rollback
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Redis away: no verdict this round (the failure was logged and counted where it happened).
        self._task = every(
            self.interval_s, self._watch, name="guard", failures=self.failures, quiet=(RedisUnavailable,)
        )

    async def aclose(self) -> None:
        await cancel_and_wait([self._task])

    async def _watch(self) -> None:
        for route in list(self.table.routes.values()):
            if route.spec.guard is None or not route.spec.canaries:
                continue
            try:
                await self.check(route)
            except RedisUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - one route's failure must not stop the others' guard
                self.failures.record("guard", exc, traceback=True, route=route.name)

    async def check(self, route: StoredRoute) -> Verdict | None:
        """Judge `route` on its signals and apply the verdict; None when nothing was (or could be) done."""
        stats = await self.stats.read(route.name, route.version)
        verdict = judge(route.spec, stats, time.time() - route.updated_at)
        if verdict is None:
            return None
        if verdict.action == "rollback":
            spec = rolled_back(route.spec, verdict.canary)
        else:
            spec = stepped(route.spec, verdict.canary, verdict.weight)
        try:
            await self.store.change(
                route.name,
                spec,
                expected=route,
                who="guard",
                why=verdict.action,
                reason={"canary_model": verdict.canary, **verdict.reason},
            )
        except RouteConflict:
            return None  # another replica acted first (or an admin did): the table reloads it
        if verdict.action == "rollback":
            self.on_rollback(route.name, verdict.reason["signal"])
            log.warning({"event": "rollback", "route": route.name, "canary_model": verdict.canary, **verdict.reason})
        else:
            log.info({"event": "route_step", "route": route.name, "canary": verdict.canary, "weight": verdict.weight})
        await self.table.reload()
        return verdict
