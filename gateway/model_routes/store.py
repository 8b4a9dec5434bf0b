"""Routes and their history, in Redis (shared by every replica, kept across restarts) or in process.

Redis layout:
  gw:route:<name>           the StoredRoute as JSON
  gw:routes                 set of route names
  gw:routes:version         rises with every change anywhere: replicas poll it to reload
  gw:route:<name>:history   newest first, the last HISTORY_LIMIT changes

Every change is a compare-and-set on the route's version (one Lua script), so two replicas' guards
acting on the same breach change the route once.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import ClientError
from gateway.model_routes.spec import RouteSpec, StoredRoute
from gateway.state.redis import RedisState

HISTORY_LIMIT = 200

# KEYS: route, names set, global version, history. ARGV: name, expected version (0 = absent), new JSON
# ('' = delete), history entry JSON. Returns 1 when written, 0 when the version moved meanwhile.
CAS_LUA = f"""
local current = redis.call('GET', KEYS[1])
local version = 0
if current then version = cjson.decode(current)['version'] end
if version ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[1]); redis.call('SREM', KEYS[2], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[3]); redis.call('SADD', KEYS[2], ARGV[1])
end
redis.call('INCR', KEYS[3])
redis.call('LPUSH', KEYS[4], ARGV[4]); redis.call('LTRIM', KEYS[4], 0, {HISTORY_LIMIT - 1})
return 1
"""


class RouteNotFound(ClientError):
    status = 404
    code = "route_not_found"


class RouteConflict(ClientError):
    status = 409
    code = "route_changed"


def history_entry(
    *, who: str, why: str, before: StoredRoute | None, after: StoredRoute | None, reason: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "at": time.time(),
        "who": who,
        "why": why,
        "from": before.public() if before else None,
        "to": after.public() if after else None,
        "reason": reason,
    }


class RouteStore:
    def __init__(self, redis: RedisState) -> None:
        self.redis = redis
        self._script = redis.client.register_script(CAS_LUA) if redis.client is not None else None
        self._routes: dict[str, StoredRoute] = {}  # without Redis: the store itself
        self._history: dict[str, list[dict[str, Any]]] = {}
        self._version = 0

    async def stamp(self) -> int:
        """The global change counter (one GET): a replica reloads when it moved."""
        if not self.redis.configured:
            return self._version
        raw = await self.redis.run("routes", lambda r: r.get("gw:routes:version"))
        return int(raw or 0)

    async def all(self) -> dict[str, StoredRoute]:
        if not self.redis.configured:
            return dict(self._routes)

        async def read(r: Any) -> list[bytes | None]:
            names = sorted(n.decode() for n in await r.smembers("gw:routes"))
            return await r.mget([f"gw:route:{n}" for n in names]) if names else []

        raws = await self.redis.run("routes", read)
        routes = [StoredRoute.model_validate_json(raw) for raw in raws if raw]
        return {route.name: route for route in routes}

    async def get(self, name: str) -> StoredRoute:
        if not self.redis.configured:
            found = self._routes.get(name)
        else:
            raw = await self.redis.run("routes", lambda r: r.get(f"gw:route:{name}"))
            found = StoredRoute.model_validate_json(raw) if raw else None
        if found is None:
            raise RouteNotFound(f"no route named {name!r}")
        return found

    async def history(self, name: str) -> list[dict[str, Any]]:
        if not self.redis.configured:
            return list(self._history.get(name, []))
        raws = await self.redis.run("routes", lambda r: r.lrange(f"gw:route:{name}:history", 0, -1))
        return [orjson.loads(raw) for raw in raws]

    async def change(
        self,
        name: str,
        spec: RouteSpec | None,
        *,
        expected: StoredRoute | None,
        who: str,
        why: str,
        reason: dict[str, Any] | None = None,
    ) -> StoredRoute | None:
        """Replace (or delete, spec None) the route if it is still at `expected`'s version; RouteConflict if
        another change came first. Returns the new StoredRoute (None when deleted)."""
        version = expected.version if expected else 0
        after = StoredRoute(name=name, spec=spec, version=version + 1, updated_at=time.time()) if spec else None
        entry = orjson.dumps(history_entry(who=who, why=why, before=expected, after=after, reason=reason))
        if not self.redis.configured:
            current = self._routes.get(name)
            if (current.version if current else 0) != version:
                raise RouteConflict(f"route {name!r} changed meanwhile; read it again")
            if after is None:
                self._routes.pop(name, None)
            else:
                self._routes[name] = after
            self._history.setdefault(name, []).insert(0, orjson.loads(entry))
            del self._history[name][HISTORY_LIMIT:]
            self._version += 1
            return after
        script = self._script
        assert script is not None  # registered whenever Redis is configured
        keys = (f"gw:route:{name}", "gw:routes", "gw:routes:version", f"gw:route:{name}:history")
        args = (name, version, after.model_dump_json() if after else "", entry)
        written = await self.redis.run("routes", lambda r: script(keys=keys, args=args, client=r))
        if not written:
            raise RouteConflict(f"route {name!r} changed meanwhile; read it again")
        return after
