"""Per-key limits: requests per minute, tokens per minute, monthly token budget.

Why not slowapi's decorator: slowapi drives the *synchronous* `limits` storage, so a stalled
Redis would block the event loop, its limits are declared per route rather than per key, and
each check is a separate round trip. Here one Lua script checks RPM, TPM and the budget and
reserves them atomically in a single round trip, so N gateway replicas sharing one Redis
enforce one limit. The `limits` library (what slowapi wraps) still guards anonymous routes
per client IP (`AnonymousLimiter`).

Token accounting: before the call we reserve an estimate (prompt length / 4 + max_tokens);
after it, `reconcile` adds (actual - estimate) to the same windows. Windows are fixed: the
current minute for RPM/TPM, the calendar month (UTC) for the budget.

When Redis is unavailable, counting falls back to this process (`LocalCounters`): the limit
then holds per replica, which is the best a partitioned replica can do.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter

from gateway import errors
from gateway.access.calendar import utc_date
from gateway.state.redis import RedisState, RedisUnavailable

# KEYS: rpm window, tpm window, budget month, [a response-cache key to read when allowed].
# ARGV: rpm, tpm, budget limits (0 = none), token estimate, minute-window ttl, month ttl.
# Returns {verdict, rpm used, tpm used, budget used, [cached value or false]} where verdict 0 = allowed
# (and reserved), 1 = rpm, 2 = tpm, 3 = budget exceeded. The cache read rides along so the whole
# pre-call policy costs one round trip. A budget refusal marks the month (KEYS[3]..':x'): the budget alerts
# call a key exhausted from its first refusal, though the last request's estimate left its count under it.
RESERVE_LUA = """
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local est = tonumber(ARGV[4])
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(redis.call('GET', KEYS[2]) or '0')
local b = tonumber(redis.call('GET', KEYS[3]) or '0')
if rpm > 0 and r + 1 > rpm then return {1, r, t, b} end
if tpm > 0 and t + est > tpm then return {2, r, t, b} end
if budget > 0 and b + est > budget then
  redis.call('SET', KEYS[3] .. ':x', 1, 'EX', ARGV[6])
  return {3, r, t, b}
end
if rpm > 0 then r = redis.call('INCRBY', KEYS[1], 1); redis.call('EXPIRE', KEYS[1], ARGV[5]) end
if tpm > 0 then t = redis.call('INCRBY', KEYS[2], est); redis.call('EXPIRE', KEYS[2], ARGV[5]) end
if budget > 0 then b = redis.call('INCRBY', KEYS[3], est); redis.call('EXPIRE', KEYS[3], ARGV[6]) end
if KEYS[4] then return {0, r, t, b, redis.call('GET', KEYS[4])} end
return {0, r, t, b}
"""

VERDICTS = {1: "rpm", 2: "tpm", 3: "budget"}
MONTH_TTL_S = 35 * 86400


@dataclass(frozen=True, slots=True)
class KeyLimits:
    rpm: int | None = None
    tpm: int | None = None
    monthly_token_budget: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.rpm or self.tpm or self.monthly_token_budget)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A granted reservation: what to reconcile later and what to put in the headers."""

    subject: str
    limits: KeyLimits
    estimate: int
    minute: int
    month: str
    rpm_used: int
    tpm_used: int
    budget_used: int
    local: bool  # counted in this process because Redis was unavailable

    def headers(self, now: float | None = None) -> dict[str, str]:
        return rate_headers(self.limits, self.rpm_used, self.tpm_used, seconds_to_next_minute(now))


class RateLimited(errors.RateLimited):
    """A limit is exhausted: a 429 with `Retry-After` and the `X-RateLimit-*` headers."""

    def __init__(self, kind: str, message: str, retry_after_s: int, headers: dict[str, str]) -> None:
        code = "token_budget_exhausted" if kind == "budget" else "rate_limit_exceeded"
        super().__init__(message, code=code, headers={**headers, "Retry-After": str(retry_after_s)})
        self.kind = kind
        self.retry_after_s = retry_after_s


def estimate_tokens(prompt_chars: int, max_tokens: int | None, default_max_tokens: int) -> int:
    """A cheap upper-leaning guess before the call: ~4 characters per token plus the output cap."""
    return math.ceil(prompt_chars / 4) + (max_tokens if max_tokens is not None else default_max_tokens)


def seconds_to_next_minute(now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, math.ceil(60 - now % 60))


def seconds_to_next_month(now: float | None = None) -> int:
    moment = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    first = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return max(1, math.ceil((first - moment).total_seconds()))


def rate_headers(limits: KeyLimits, rpm_used: int, tpm_used: int, reset_s: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    if limits.rpm:
        headers["X-RateLimit-Limit"] = str(limits.rpm)
        headers["X-RateLimit-Remaining"] = str(max(0, limits.rpm - rpm_used))
        headers["X-RateLimit-Reset"] = str(reset_s)
    if limits.tpm:
        headers["X-RateLimit-Limit-Tokens"] = str(limits.tpm)
        headers["X-RateLimit-Remaining-Tokens"] = str(max(0, limits.tpm - tpm_used))
        headers["X-RateLimit-Reset-Tokens"] = str(reset_s)
    return headers


class LocalCounters:
    """Fixed-window counters in this process, bounded; used when Redis is unavailable."""

    def __init__(self, max_entries: int = 50_000) -> None:
        self.max_entries = max_entries
        self._counts: OrderedDict[str, int] = OrderedDict()

    def get(self, key: str) -> int:
        return self._counts.get(key, 0)

    def add(self, key: str, amount: int) -> int:
        value = self._counts.get(key, 0) + amount
        self._counts[key] = value
        self._counts.move_to_end(key)
        while len(self._counts) > self.max_entries:
            self._counts.popitem(last=False)
        return value


class KeyRateLimiter:
    """RPM + TPM + monthly budget per subject, shared through Redis when it is there."""

    def __init__(
        self,
        redis: RedisState,
        *,
        on_limited: Callable[[str], None] | None = None,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        """`on_limited(kind)`: a request was refused; `on_drop()`: a token adjustment was lost (Redis away
        long enough to fill the buffer)."""
        self.redis = redis
        self.local = LocalCounters()
        self._script = redis.client.register_script(RESERVE_LUA) if redis.client is not None else None
        self._on_limited = on_limited
        self._on_drop = on_drop
        self._pending: dict[str, int] = {}  # Redis key -> token adjustment not yet written
        self.max_pending = 50_000

    @staticmethod
    def _keys(subject: str, minute: int, month: str) -> tuple[str, str, str]:
        return (f"gw:rl:r:{subject}:{minute}", f"gw:rl:t:{subject}:{minute}", f"gw:rl:b:{subject}:{month}")

    async def reserve(
        self, subject: str, limits: KeyLimits, estimate: int, get_key: str | None = None, *, now: float | None = None
    ) -> tuple[Reservation | None, bytes | None]:
        """Reserve one request and `estimate` tokens, or raise `RateLimited`; with a GET of `get_key` (the
        response-cache read) in the same round trip. (None, None) when `limits` limit nothing."""
        if not limits.any:
            return None, None
        now = time.time() if now is None else now
        minute, month = int(now // 60), utc_date("%Y-%m", now)
        keys = self._keys(subject, minute, month)
        args = (limits.rpm or 0, limits.tpm or 0, limits.monthly_token_budget or 0, estimate, 120, MONTH_TTL_S)
        local, fetched = False, None
        try:
            script = self._script
            if script is None:
                raise RedisUnavailable("no redis")
            all_keys = keys if get_key is None else (*keys, get_key)
            verdict, r, t, b, *rest = await self.redis.run(
                "rate_limit", lambda c: script(keys=all_keys, args=args, client=c)
            )
            fetched = rest[0] if rest and rest[0] else None
        except RedisUnavailable:
            verdict, r, t, b = self._reserve_locally(keys, limits, estimate)
            local = True
        if verdict:
            raise self._limited(VERDICTS[verdict], limits, r, t, now)
        return Reservation(subject, limits, estimate, minute, month, r, t, b, local), fetched

    def _reserve_locally(self, keys: tuple[str, str, str], limits: KeyLimits, est: int) -> tuple[int, int, int, int]:
        r, t, b = (self.local.get(k) for k in keys)
        if limits.rpm and r + 1 > limits.rpm:
            return 1, r, t, b
        if limits.tpm and t + est > limits.tpm:
            return 2, r, t, b
        if limits.monthly_token_budget and b + est > limits.monthly_token_budget:
            self.local.add(keys[2] + ":x", 1)
            return 3, r, t, b
        return (
            0,
            self.local.add(keys[0], 1) if limits.rpm else r,
            self.local.add(keys[1], est) if limits.tpm else t,
            self.local.add(keys[2], est) if limits.monthly_token_budget else b,
        )

    def _limited(self, kind: str, limits: KeyLimits, r: int, t: int, now: float) -> RateLimited:
        if self._on_limited is not None:
            self._on_limited(kind)
        reset = seconds_to_next_minute(now)
        if kind == "budget":
            return RateLimited(
                kind,
                f"monthly token budget of {limits.monthly_token_budget} exhausted",
                seconds_to_next_month(now),
                rate_headers(limits, r, t, reset),
            )
        what = f"{limits.rpm} requests" if kind == "rpm" else f"{limits.tpm} tokens"
        return RateLimited(
            kind,
            f"rate limit of {what} per minute reached; retry in {reset}s",
            reset,
            rate_headers(limits, r, t, reset),
        )

    def reconcile(self, reservation: Reservation | None, actual_tokens: int) -> None:
        """Replace the estimate with the real token count (may give tokens back).

        With Redis the adjustment is buffered and written with the next write-behind flush (one
        pipeline for many requests); until then the estimate stays counted (the strict side).
        """
        if reservation is None:
            return
        delta = actual_tokens - reservation.estimate
        if delta == 0:
            return
        keys = self._keys(reservation.subject, reservation.minute, reservation.month)
        lim = reservation.limits
        targets = [k for k, on in ((keys[1], lim.tpm), (keys[2], lim.monthly_token_budget)) if on]
        for key in targets:
            if reservation.local or not self.redis.configured:
                self.local.add(key, delta)
            else:
                self._adjust_later(key, delta)

    def _adjust_later(self, key: str, delta: int) -> None:
        """Buffer `delta` for `key` until the next `stage` (a bounded buffer: past it, new keys are dropped)."""
        if key in self._pending or len(self._pending) < self.max_pending:
            self._pending[key] = self._pending.get(key, 0) + delta
        elif self._on_drop is not None:
            self._on_drop()

    async def budget_used(self, subjects: list[str], *, now: float | None = None) -> dict[str, tuple[int, bool]]:
        """Per subject: tokens used of this month's budget (reservations included) and whether a request was
        refused for it this month; one round trip, or this process's own counts while Redis is away."""
        month = utc_date("%Y-%m", time.time() if now is None else now)
        counters = [f"gw:rl:b:{subject}:{month}" for subject in subjects]
        keys = counters + [f"{key}:x" for key in counters]
        if not subjects:
            return {}
        try:
            if not self.redis.configured:
                raise RedisUnavailable("no redis")
            values: list[Any] = await self.redis.run("budget_read", lambda r: r.mget(keys))
        except RedisUnavailable:
            values = [self.local.get(key) for key in keys]
        n = len(subjects)
        return {s: (int(values[i] or 0), bool(values[n + i])) for i, s in enumerate(subjects)}

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def stage(self, pipe: Any) -> Callable[[], None]:
        """Queue the buffered adjustments on `pipe`; the returned callback puts them back on failure."""
        pending, self._pending = self._pending, {}
        for key, delta in pending.items():
            pipe.incrby(key, delta)
            # NX: never extend a window, but never leave a recreated key without expiry either.
            pipe.expire(key, MONTH_TTL_S if key.startswith("gw:rl:b:") else 120, nx=True)

        def restore() -> None:
            for key, delta in pending.items():
                self._pending[key] = self._pending.get(key, 0) + delta

        return restore


class AnonymousLimiter:
    """Default limit for routes without an identity, per client IP, via `limits` (what slowapi wraps).

    With Redis it is one limit across replicas (`limits`' Redis storage on the gateway's own
    connection pool, called through the circuit); otherwise, or while Redis is unavailable,
    per process.
    """

    def __init__(self, per_minute: int, redis: RedisState | None = None) -> None:
        self.item = RateLimitItemPerMinute(per_minute)
        self.redis = redis
        self.local = FixedWindowRateLimiter(MemoryStorage())
        self.shared = None
        if redis is not None and redis.client is not None:
            # limits types its storage options as plain values; redis-py's own pool is what it takes here
            storage = RedisStorage(
                "async+redis://",
                connection_pool=redis.client.connection_pool,  # type: ignore[arg-type]
                implementation="redispy",
                key_prefix="gw:anon",
            )
            self.shared = FixedWindowRateLimiter(storage)

    async def check(self, client_ip: str) -> None:
        limiter = self.local
        if self.shared is not None and self.redis is not None:
            shared = self.shared
            try:
                if await self.redis.run("rate_limit", lambda _: shared.hit(self.item, "anon", client_ip)):
                    return
                limiter = shared
            except RedisUnavailable:
                pass
        if limiter is self.local and await self.local.hit(self.item, "anon", client_ip):
            return
        stats = await limiter.get_window_stats(self.item, "anon", client_ip)
        retry = max(1, math.ceil(stats.reset_time - time.time()))
        raise RateLimited(
            "rpm",
            f"too many requests from this address; retry in {retry}s",
            retry,
            {"X-RateLimit-Limit": str(self.item.amount), "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(retry)},
        )
