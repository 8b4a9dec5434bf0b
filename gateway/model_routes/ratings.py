"""One rating per answer: each request's current rating, and what a route's guard reads of them.

A request's owner (or a reviewer) rates an answer up or down; rating it again replaces the rating. The
guard counts rated requests (a changed rating moves the request from one count to the other, a repeated
one changes nothing) and the distinct users behind them (`raters`: the rated request's `user`, else its
key), so one caller voting many times, or many times on one answer, cannot steer a rollout alone.

Redis: `gw:rating:<request id>` -> `<stats hash>|<variant>|<rating>` (kept as long as route stats), and a
set of raters per route version and variant; one Lua script updates all three atomically. Without Redis,
this process keeps them.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from gateway.model_routes.stats import STATS_TTL_S, RouteStats, stats_key
from gateway.state.redis import RedisState, text

Change = Literal["new", "changed", "same"]
MAX_LOCAL_RATINGS = 100_000

# KEYS: the request's rating, the stats hash (or "" for a request no route served), the variant's raters.
# ARGV: variant, rating (up|down), rater, ttl. Returns "new", "changed" or "same".
RATE_LUA = """
local now = KEYS[2] .. '|' .. ARGV[1] .. '|' .. ARGV[2]
local before = redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], now, 'EX', ARGV[4])
if before == now then return 'same' end
if KEYS[2] ~= '' then
  if before then
    local hash, variant, rating = string.match(before, '^(.*)|(.*)|(.*)$')
    if hash ~= '' then redis.call('HINCRBY', hash, variant .. '|thumbs_' .. rating, -1) end
  end
  redis.call('HINCRBY', KEYS[2], ARGV[1] .. '|thumbs_' .. ARGV[2], 1)
  if redis.call('SADD', KEYS[3], ARGV[3]) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[1] .. '|raters', 1) end
  redis.call('EXPIRE', KEYS[2], ARGV[4]); redis.call('EXPIRE', KEYS[3], ARGV[4])
end
if before then return 'changed' end
return 'new'
"""


class Ratings:
    def __init__(self, redis: RedisState, stats: RouteStats) -> None:
        self.redis = redis
        self.stats = stats
        self._script = redis.client.register_script(RATE_LUA) if redis.client is not None else None
        # Without Redis: request id -> (route, version, variant, rating); (route, version, variant) -> raters.
        self._local: OrderedDict[str, tuple[str, int, str, str]] = OrderedDict()
        self._raters: dict[tuple[str, int, str], set[str]] = {}

    async def rate(
        self, request_id: str, rating: str, *, route: str | None, version: int | None, variant: str, rater: str
    ) -> Change:
        """Record `request_id`'s rating (replacing one before); its route's signals follow."""
        if self._script is None:
            return self._rate_here(request_id, rating, route, version, variant, rater)
        script = self._script
        stats = stats_key(route, version) if route is not None and version is not None else ""
        keys = (f"gw:rating:{request_id}", stats, f"{stats}:raters:{variant}" if stats else "")
        args = (variant, rating, rater, STATS_TTL_S)
        change = await self.redis.run("ratings", lambda r: script(keys=keys, args=args, client=r))
        return text(change)  # type: ignore[return-value]

    def _rate_here(
        self, request_id: str, rating: str, route: str | None, version: int | None, variant: str, rater: str
    ) -> Change:
        before = self._local.get(request_id)
        now = (route or "", version or 0, variant, rating)
        self._local[request_id] = now
        self._local.move_to_end(request_id)
        if len(self._local) > MAX_LOCAL_RATINGS:
            self._local.popitem(last=False)
        if before == now:
            return "same"
        if route is not None and version is not None:
            if before is not None and before[0]:
                self.stats.adjust(before[0], before[1], before[2], {f"thumbs_{before[3]}": -1})
            self.stats.adjust(route, version, variant, {f"thumbs_{rating}": 1})
            raters = self._raters.setdefault((route, version, variant), set())
            if rater not in raters:
                raters.add(rater)
                self.stats.adjust(route, version, variant, {"raters": 1})
        return "changed" if before is not None else "new"
