"""Requests in flight on each adapter version of each vLLM server, counted across every gateway process.

A version no registered adapter uses any more is unloaded once its traffic has drained: on every
gateway replica (and every uvicorn worker), not only in the process that noticed it is stale. Each
request on a versioned adapter holds a lease in Redis while it runs:

  gw:adapters:inflight:<server url>|<version>   sorted set: lease id -> expiry (unix seconds)

`begin` adds the lease before the request is sent, `end` removes it; `drained` is true when no
unexpired lease is left. Leases expire after `lease_s` (the gateway's total request timeout and a
margin), so a gateway that died mid-request cannot keep a version loaded forever.

Without `REDIS_URL` there is one process: its own counts are the whole truth, and `drained` is true.
While Redis is unreachable nothing is unloaded (`drained` is false): an unload under another replica's
stream would cut it, a version kept loaded a little longer only costs memory.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

from gateway.state.redis import RedisState, RedisUnavailable

log = logging.getLogger("gateway.adapters")
PREFIX = "gw:adapters:inflight:"


class AdapterLeases:
    def __init__(self, redis: RedisState, *, lease_s: float) -> None:
        self.redis = redis
        self.lease_s = lease_s
        self._prefix = f"{os.getpid()}-{os.urandom(4).hex()}:"  # this process's leases
        self._ids = itertools.count()

    @staticmethod
    def key(server: str, version: str) -> str:
        return f"{PREFIX}{server}|{version}"

    async def begin(self, server: str, version: str) -> str | None:
        """Take a lease for one request; None when there is no Redis to hold it (the request goes on)."""
        if not self.redis.configured:
            return None
        lease, key = f"{self._prefix}{next(self._ids)}", self.key(server, version)

        async def add(r: Any) -> None:
            async with r.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {lease: time.time() + self.lease_s})
                pipe.expire(key, int(self.lease_s) + 60)
                await pipe.execute()

        try:
            await self.redis.run("adapter_inflight", add)
        except RedisUnavailable as exc:  # counted in gateway_redis_errors_total; per request it would flood the log
            log.debug("adapter %s: in-flight lease not recorded (%s)", version, exc.message)
            return None
        return lease

    async def end(self, server: str, version: str, lease: str | None) -> None:
        if lease is None:
            return
        key = self.key(server, version)
        try:
            await self.redis.run("adapter_inflight", lambda r: r.zrem(key, lease))
        except RedisUnavailable:
            pass  # the lease expires by itself

    async def drained(self, server: str, version: str) -> bool:
        """No gateway process has a request in flight on `version` of `server` (expired leases aside)."""
        if not self.redis.configured:
            return True
        key = self.key(server, version)

        async def count(r: Any) -> int:
            async with r.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(key, "-inf", time.time())
                pipe.zcard(key)
                return (await pipe.execute())[1]

        try:
            return await self.redis.run("adapter_inflight", count) == 0
        except RedisUnavailable:
            return False
