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

Leases: far from a limit, a round trip per request buys nothing but latency. So the script may
also grant a lease, a share of the window's headroom counted in Redis at once, that this process
then spends request by request with no round trip (`LeaseBook`). A lease is granted only when
the window has room for at least LEASE_SHARE more of the same request beyond this one, and takes
at most 1/LEASE_SHARE of that room: near a limit every request goes to Redis, so the limit stays
exact there and is never exceeded anywhere (leases are counted before they are spent). The cost
is on the strict side: a lease a replica does not spend before its window ends is counted anyway
(at most 1/LEASE_SHARE of the room left when it was granted, per replica).

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

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter

from gateway import errors
from gateway.redis_state import RedisState, RedisUnavailable, flush_staged
from gateway.utc_dates import utc_date

# KEYS: rpm window, tpm window, budget month, [a response-cache key to read when allowed].
# ARGV: rpm, tpm, budget limits (0 = none), token estimate, minute-window ttl, month ttl, lease share,
# lease wanted beyond this request (requests, tokens, budget tokens; 0 = none).
# Returns {verdict, rpm used, tpm used, budget used, rpm lease, tpm lease, budget lease, [cached value
# or false]} where verdict 0 = allowed (and reserved, leases included in the used counts), 1 = rpm,
# 2 = tpm, 3 = budget exceeded. The cache read rides along so the whole pre-call policy costs one
# round trip (or none, on a lease).
RESERVE_LUA = """
local rpm, tpm, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local est = tonumber(ARGV[4])
local share = tonumber(ARGV[7] or '0')
local function lease(limit, used, need, want)
  if share <= 0 or want == nil or tonumber(want) <= 0 then return 0 end
  local room = math.floor((limit - used - need) / share)
  if room < need then return 0 end
  return math.min(tonumber(want), room)
end
local r = tonumber(redis.call('GET', KEYS[1]) or '0')
local t = tonumber(redis.call('GET', KEYS[2]) or '0')
local b = tonumber(redis.call('GET', KEYS[3]) or '0')
if rpm > 0 and r + 1 > rpm then return {1, r, t, b, 0, 0, 0} end
if tpm > 0 and t + est > tpm then return {2, r, t, b, 0, 0, 0} end
if budget > 0 and b + est > budget then return {3, r, t, b, 0, 0, 0} end
local lr, lt, lb = 0, 0, 0
if rpm > 0 then
  lr = lease(rpm, r, 1, ARGV[8])
  r = redis.call('INCRBY', KEYS[1], 1 + lr); redis.call('EXPIRE', KEYS[1], ARGV[5])
end
if tpm > 0 then
  lt = lease(tpm, t, est, ARGV[9])
  t = redis.call('INCRBY', KEYS[2], est + lt); redis.call('EXPIRE', KEYS[2], ARGV[5])
end
if budget > 0 then
  lb = lease(budget, b, est, ARGV[10])
  b = redis.call('INCRBY', KEYS[3], est + lb); redis.call('EXPIRE', KEYS[3], ARGV[6])
end
if KEYS[4] then return {0, r, t, b, lr, lt, lb, redis.call('GET', KEYS[4])} end
return {0, r, t, b, lr, lt, lb}
"""

# A lease takes at most 1/LEASE_SHARE of a window's room, and only where the room holds LEASE_SHARE
# more of the same request; it covers at most LEASE_REQUESTS requests (or as many estimates' tokens).
LEASE_SHARE = 16
LEASE_REQUESTS = 32

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


class LeaseBook:
    """The leases this process holds and has not spent, by window key, with the window's shared count
    when last granted (leases included): this process's view of "used" is that count less what it holds.
    Windows of a past minute (or month) are dropped when the next one starts, and a lease granted under
    another limit (the key's limits changed) is not spent; either way its units were counted already."""

    def __init__(self, max_windows: int = 50_000) -> None:
        self.max_windows = max_windows
        self._minute = -1
        self._month = ""
        self._leases: dict[str, list[int]] = {}  # window key -> [units held, shared count at the grant, limit]

    def turn(self, minute: int, month: str) -> None:
        if minute != self._minute or month != self._month:
            current = ":" + month
            self._leases = {k: v for k, v in self._leases.items() if k.endswith(current)} if month == self._month \
                else {}
            self._minute, self._month = minute, month

    def held(self, key: str) -> int:
        lease = self._leases.get(key)
        return lease[0] if lease is not None else 0

    def take(self, keys: tuple[str, str, str], limits: KeyLimits, estimate: int) -> tuple[int, int, int] | None:
        """Spend one request (and `estimate` tokens) from the leases of every limit in force: the used
        counts as this process sees them, or None, with nothing spent, when one of them is short."""
        leases = self._leases
        lr = lt = lb = None
        rpm, tpm, budget = limits.rpm, limits.tpm, limits.monthly_token_budget
        if rpm and ((lr := leases.get(keys[0])) is None or lr[0] < 1 or lr[2] != rpm):
            return None
        if tpm and ((lt := leases.get(keys[1])) is None or lt[0] < estimate or lt[2] != tpm):
            return None
        if budget and ((lb := leases.get(keys[2])) is None or lb[0] < estimate or lb[2] != budget):
            return None
        if lr is not None:
            lr[0] -= 1
        if lt is not None:
            lt[0] -= estimate
        if lb is not None:
            lb[0] -= estimate
        return (lr[1] - lr[0] if lr else 0, lt[1] - lt[0] if lt else 0, lb[1] - lb[0] if lb else 0)

    def grant(self, key: str, units: int, counted: int, limit: int) -> int:
        """Record a grant of `units` (maybe 0) under `limit`, with the window's shared count after it;
        the used count as this process sees it."""
        lease = self._leases.get(key)
        if lease is None:
            if not units:
                return counted
            if len(self._leases) >= self.max_windows:
                self._leases.clear()  # unspent leases stay counted: the strict side
            lease = self._leases[key] = [0, counted, limit]
        elif lease[2] != limit:  # granted under a limit since changed: not spent (it stays counted)
            lease[0], lease[2] = 0, limit
        lease[0] += units
        lease[1] = counted
        return counted - lease[0]

    def give_back(self) -> dict[str, int]:
        """Every unspent lease, emptied: what to subtract from the shared counts (on shutdown)."""
        held = {k: v[0] for k, v in self._leases.items() if v[0] > 0}
        self._leases.clear()
        return held


class KeyRateLimiter:
    """RPM + TPM + monthly budget per subject, shared through Redis when it is there."""

    def __init__(self, redis: RedisState, *, on_limited=None) -> None:
        self.redis = redis
        self.local = LocalCounters()
        self.leases = LeaseBook()
        self._asking: set[str] = set()  # windows (their rpm key) with a lease request in flight
        self._script = redis.client.register_script(RESERVE_LUA) if redis.client is not None else None
        self._wire_sha = redis.wire.register_script(RESERVE_LUA) if redis.wire is not None else None
        self._on_limited = on_limited
        self._pending: dict[str, int] = {}  # Redis key -> token adjustment not yet written
        self.max_pending = 50_000

    @staticmethod
    def _keys(subject: str, minute: int, month: str) -> tuple[str, str, str]:
        return (f"gw:rl:r:{subject}:{minute}", f"gw:rl:t:{subject}:{minute}", f"gw:rl:b:{subject}:{month}")

    async def reserve(self, subject: str, limits: KeyLimits, estimate: int, now: float | None = None) -> Reservation | None:
        """Reserve one request and `estimate` tokens, or raise `RateLimited`. None: no limits."""
        reservation = self.leased(subject, limits, estimate, now=now)
        if reservation is None:
            reservation, _ = await self.reserve_and_get(subject, limits, estimate, None, now=now)
        return reservation

    def leased(self, subject: str, limits: KeyLimits, estimate: int, *, now: float | None = None) -> Reservation | None:
        """A reservation paid from this process's leases, with no I/O; None when they fall short (or there
        are no limits): then `reserve_and_get` asks Redis."""
        if not limits.any:
            return None
        now, minute, month, keys = self._window(subject, now)
        used = self.leases.take(keys, limits, estimate)
        if used is None:
            return None
        return Reservation(subject, limits, estimate, minute, month, *used, False)

    def _window(self, subject: str, now: float | None) -> tuple[float, int, str, tuple[str, str, str]]:
        """The time, the current minute and month, and their window keys; past windows' leases dropped."""
        now = time.time() if now is None else now
        minute = int(now // 60)
        month = utc_date("%Y-%m", now)
        self.leases.turn(minute, month)
        return now, minute, month, self._keys(subject, minute, month)

    async def reserve_and_get(self, subject: str, limits: KeyLimits, estimate: int, get_key: str | None, *,
                              now: float | None = None) -> tuple[Reservation | None, bytes | None]:
        """`reserve` through Redis (topping up this process's leases), plus a GET of `get_key` (the
        response-cache read) in the same round trip."""
        if not limits.any:
            return None, None
        now, minute, month, keys = self._window(subject, now)
        book = self.leases
        # One lease request per window in flight: a burst of concurrent first requests would otherwise
        # each take a lease before any of them could be spent.
        ask = keys[0] not in self._asking
        wants = (LEASE_REQUESTS - book.held(keys[0]), LEASE_REQUESTS * estimate - book.held(keys[1]),
                 LEASE_REQUESTS * estimate - book.held(keys[2])) if ask else (0, 0, 0)
        args = (limits.rpm or 0, limits.tpm or 0, limits.monthly_token_budget or 0, estimate, 120, MONTH_TTL_S,
                LEASE_SHARE, *(max(0, w) for w in wants))
        local, fetched = False, None
        if ask:
            self._asking.add(keys[0])
        try:
            if self._script is None:
                raise RedisUnavailable("no redis")
            all_keys = keys if get_key is None else (*keys, get_key)
            wire, sha, script = self.redis.wire, self._wire_sha, self._script
            if wire is not None and sha is not None:  # the per-request call: over the multiplexed connection
                call = lambda _: wire.evalsha(sha, all_keys, args)  # noqa: E731
            else:
                call = lambda c: script(keys=all_keys, args=args, client=c)  # noqa: E731
            verdict, r, t, b, lr, lt, lb, *rest = await self.redis.run("rate_limit", call)
            fetched = rest[0] if rest and rest[0] else None
            if not verdict:  # this process's view: the shared counts less the leases it holds
                r = book.grant(keys[0], lr, r, limits.rpm) if limits.rpm else r
                t = book.grant(keys[1], lt, t, limits.tpm) if limits.tpm else t
                b = book.grant(keys[2], lb, b, limits.monthly_token_budget) if limits.monthly_token_budget else b
        except RedisUnavailable:
            verdict, r, t, b = self._reserve_locally(keys, limits, estimate)
            local = True
        finally:
            if ask:
                self._asking.discard(keys[0])
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
            return 3, r, t, b
        return (0, self.local.add(keys[0], 1) if limits.rpm else r, self.local.add(keys[1], est) if limits.tpm else t,
                self.local.add(keys[2], est) if limits.monthly_token_budget else b)

    def _limited(self, kind: str, limits: KeyLimits, r: int, t: int, now: float) -> RateLimited:
        if self._on_limited is not None:
            self._on_limited(kind)
        reset = seconds_to_next_minute(now)
        if kind == "budget":
            return RateLimited(kind, f"monthly token budget of {limits.monthly_token_budget} exhausted",
                               seconds_to_next_month(now), rate_headers(limits, r, t, reset))
        what = f"{limits.rpm} requests" if kind == "rpm" else f"{limits.tpm} tokens"
        return RateLimited(kind, f"rate limit of {what} per minute reached; retry in {reset}s", reset,
                           rate_headers(limits, r, t, reset))

    def reconcile(self, reservation: Reservation | None, actual_tokens: int) -> None:
        """Replace the estimate with the real token count (may give tokens back).

        With Redis the adjustment is buffered and written by the next `stage`/`flush` (one
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

    def give_back_leases(self) -> None:
        """Queue every unspent lease for subtraction from the shared counts (at shutdown: a restarted
        process must not leave its leases counted against the key for the rest of the window)."""
        if not self.redis.configured:
            return
        for key, units in self.leases.give_back().items():
            self._adjust_later(key, -units)

    def _adjust_later(self, key: str, delta: int) -> None:
        """Buffer `delta` for `key` until the next `stage` (a bounded buffer: past it, new keys are dropped)."""
        if key in self._pending or len(self._pending) < self.max_pending:
            self._pending[key] = self._pending.get(key, 0) + delta

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def stage(self, pipe) -> Callable[[], None]:  # noqa: ANN001
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

    async def flush(self) -> None:
        """Write buffered adjustments now (the policy batches them with other writes instead)."""
        await flush_staged(self.redis, "rate_limit_reconcile", [self.stage])


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
            storage = RedisStorage("async+redis://", connection_pool=redis.client.connection_pool,
                                   implementation="redispy", key_prefix="gw:anon")
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
        raise RateLimited("rpm", f"too many requests from this address; retry in {retry}s", retry,
                          {"X-RateLimit-Limit": str(self.item.amount), "X-RateLimit-Remaining": "0",
                           "X-RateLimit-Reset": str(retry)})
