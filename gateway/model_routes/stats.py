"""Per-variant signals of a route since its last change, shared by every replica: requests, errors,
time to first token (a histogram), JSON-format compliance and thumbs up/down.

Redis: one hash per route version, `gw:rstat:<route>:<version>`, fields `<variant>|<signal>` and
`<variant>|ttft:<bucket>`; kept STATS_TTL_S. Increments are buffered and written with the answer's
other writes (gateway/state/write_behind.py), so they cost no round trip of their own. Without Redis the
counts live in this process.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.model_routes.spec import StoredRoute
from gateway.observability.metrics import GatewayMetrics
from gateway.protocol.answer import ERROR_OUTCOMES, NO_BACKEND, Answer
from gateway.state.redis import RedisState, text

STATS_TTL_S = 30 * 86400
# Upper bounds of the TTFT histogram: 1 ms to ~2 min, each 25 % above the last.
TTFT_BOUNDS_S = tuple(0.001 * 1.25**i for i in range(53))
# thumbs_up/down count rated requests (a request's rating replaced, not added: ratings.py) and raters the
# distinct users who rated the variant's answers.
SIGNALS = ("requests", "errors", "format_valid", "format_invalid", "thumbs_up", "thumbs_down", "raters")
MAX_PENDING_KEYS = 1000


@dataclass
class VariantStats:
    requests: int = 0
    errors: int = 0
    format_valid: int = 0
    format_invalid: int = 0
    thumbs_up: int = 0
    thumbs_down: int = 0
    raters: int = 0
    ttft: dict[int, int] = field(default_factory=dict)  # bucket index -> count

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def format_checked(self) -> int:
        return self.format_valid + self.format_invalid

    @property
    def format_failure(self) -> float:
        return self.format_invalid / self.format_checked if self.format_checked else 0.0

    @property
    def votes(self) -> int:
        return self.thumbs_up + self.thumbs_down

    @property
    def thumbs_down_share(self) -> float:
        return self.thumbs_down / self.votes if self.votes else 0.0

    def ttft_quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile (None without samples)."""
        total = sum(self.ttft.values())
        if not total:
            return None
        rank, seen = math.ceil(q * total), 0
        for index in sorted(self.ttft):
            seen += self.ttft[index]
            if seen >= rank:
                return TTFT_BOUNDS_S[min(index, len(TTFT_BOUNDS_S) - 1)]
        return TTFT_BOUNDS_S[-1]

    def public(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "ttft_p50_s": self.ttft_quantile(0.5),
            "ttft_p95_s": self.ttft_quantile(0.95),
            "format_valid": self.format_valid,
            "format_invalid": self.format_invalid,
            "thumbs_up": self.thumbs_up,
            "thumbs_down": self.thumbs_down,
            "raters": self.raters,
        }


def stats_key(route: str, version: int) -> str:
    return f"gw:rstat:{route}:{version}"


def parse(fields: dict[str, int]) -> dict[str, VariantStats]:
    """`<variant>|<signal>` counters -> stats per variant."""
    out: dict[str, VariantStats] = defaultdict(VariantStats)
    for name, value in fields.items():
        variant, _, signal = name.rpartition("|")
        stats = out[variant]
        if signal.startswith("ttft:"):
            stats.ttft[int(signal[5:])] = value
        elif signal in SIGNALS:
            setattr(stats, signal, value)
    return dict(out)


class RouteStats:
    def __init__(self, redis: RedisState, metrics: GatewayMetrics | None = None) -> None:
        self.redis = redis
        self.metrics = metrics
        self._pending: dict[str, dict[str, int]] = defaultdict(dict)  # with Redis: the buffer; else the store

    def record(self, route: StoredRoute, variant: str, answer: Answer, verdict: str | None) -> None:
        """An answer's signals for the route's guard: the outcome of the chosen `variant`, unless a fallback
        answered (then the variant failed, and the fallback is counted). `verdict`: its format check."""
        if answer.outcome in ("cache_hit", "cancelled", "client_error"):
            return  # says nothing about the variant's quality
        fell_back = answer.model != variant and answer.backend != NO_BACKEND
        error = fell_back or answer.outcome in ERROR_OUTCOMES
        ttft = answer.ttft_s if answer.ttft_s is not None else answer.elapsed_s
        self.record_answer(
            route.name,
            route.version,
            variant,
            error=error,
            ttft_s=None if fell_back else ttft,
            format_verdict=None if fell_back else verdict,
        )
        if fell_back and answer.outcome == "success" and self.metrics is not None:
            self.metrics.route_fallbacks.labels(route.name, answer.model).inc()

    def record_answer(
        self, route: str, version: int, variant: str, *, error: bool, ttft_s: float | None, format_verdict: str | None
    ) -> None:
        counts = {"requests": 1, "errors": int(error)}
        if format_verdict is not None:
            counts[f"format_{format_verdict}"] = 1
        if ttft_s is not None and not error:
            counts[f"ttft:{bisect.bisect_left(TTFT_BOUNDS_S, ttft_s)}"] = 1
        self._add(stats_key(route, version), variant, counts)

    def adjust(self, route: str, version: int, variant: str, counts: dict[str, int]) -> None:
        """Add `counts` (signal -> amount, negative to take back) to a variant's signals (ratings.py, without
        Redis; with it, ratings change the shared counts themselves)."""
        self._add(stats_key(route, version), variant, counts)

    def _add(self, key: str, variant: str, counts: dict[str, int]) -> None:
        if key not in self._pending and len(self._pending) >= MAX_PENDING_KEYS and self.redis.configured:
            if self.metrics is not None:  # Redis has been away for long: a guard may miss these
                self.metrics.dropped_writes.labels("route_stats").inc()
            return
        bucket = self._pending[key]
        for signal, amount in counts.items():
            name = f"{variant}|{signal}"
            bucket[name] = bucket.get(name, 0) + amount

    @property
    def has_pending(self) -> bool:
        return self.redis.configured and bool(self._pending)

    def stage(self, pipe: Any) -> Callable[[], None]:
        """Queue the buffered increments on `pipe`; the returned callback puts them back on failure."""
        if not self.redis.configured:
            return lambda: None
        pending, self._pending = self._pending, defaultdict(dict)
        for key, counts in pending.items():
            for name, amount in counts.items():
                pipe.hincrby(key, name, amount)
            pipe.expire(key, STATS_TTL_S)

        def restore() -> None:
            for key, counts in pending.items():
                for name, amount in counts.items():
                    self._pending[key][name] = self._pending[key].get(name, 0) + amount

        return restore

    async def read(self, route: str, version: int) -> dict[str, VariantStats]:
        key = stats_key(route, version)
        if not self.redis.configured:
            return parse(dict(self._pending.get(key, {})))
        raw = await self.redis.run("routes", lambda r: r.hgetall(key))
        return parse({text(k): int(v) for k, v in raw.items()})
