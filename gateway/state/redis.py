"""The gateway's one Redis client (redis-py's asyncio client, hiredis parser), with a circuit so a dead
Redis never stalls a request.

Every Redis call on the request path goes through `RedisState.run`. It bounds the call with a
short timeout; on a failure it opens the circuit for `retry_after_s`, during which calls fail
at once with `RedisUnavailable` (no socket work), and the caller falls back to its in-process
store. The first call after that window is the probe: success closes the circuit, so the
gateway recovers by itself when Redis comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.errors import GatewayError

log = logging.getLogger("gateway.redis")
T = TypeVar("T")
# Queues a source's buffered writes on a pipeline; returns the callback that puts them back on failure.
Stager = Callable[[Any], Callable[[], None]]


class RedisUnavailable(GatewayError):
    """Redis is not configured, the circuit is open, or the call just failed.

    Callers on the request path catch it and fall back; where there is no fallback (admin
    writes) it reaches the client as a 503.
    """

    status = 503
    type = "service_unavailable"
    code = "redis_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class RedisState:
    """Holds the client (or None when `REDIS_URL` is unset) and the circuit around it."""

    def __init__(
        self,
        client: aioredis.Redis | None,
        *,
        timeout_s: float = 0.25,
        retry_after_s: float = 3.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.configured = client is not None  # REDIS_URL set; fixed for the process's life
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self._on_error = on_error
        self._open_until = 0.0
        self._down = False
        self.last_error: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str | None,
        *,
        timeout_s: float = 0.25,
        retry_after_s: float = 3.0,
        on_error: Callable[[str], None] | None = None,
    ) -> RedisState:
        """Build the client without connecting (connections open lazily on first use).

        Any URL redis-py takes: `redis://`, `rediss://` (TLS; `ssl_ca_certs=...` and the other `ssl_*`
        query arguments set the trust), `unix:///path/redis.sock`."""
        if not url:
            return cls(None, timeout_s=timeout_s, retry_after_s=retry_after_s, on_error=on_error)
        client = aioredis.Redis.from_url(
            url,
            # No socket_timeout: `run` bounds every call with one asyncio deadline already; a call cut by
            # that deadline drops its connection.
            socket_timeout=None,
            socket_connect_timeout=timeout_s,
            # One immediate retry on a connection error only: after a Redis restart every pooled
            # connection is stale once. Timeouts are not retried; the circuit handles those.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=0,
            max_connections=64,
        )
        return cls(client, timeout_s=timeout_s, retry_after_s=retry_after_s, on_error=on_error)

    @property
    def circuit_open(self) -> bool:
        return time.monotonic() < self._open_until

    @property
    def usable(self) -> bool:
        """True when a call would be attempted now (configured and circuit closed)."""
        return self.client is not None and not self.circuit_open

    async def run(self, operation: str, call: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """Run `call(client)` within the timeout; raise `RedisUnavailable` instead of hanging."""
        client = self.client
        if client is None:
            raise RedisUnavailable("REDIS_URL is not set")
        if self.circuit_open:
            raise RedisUnavailable(f"redis circuit open ({self.last_error})")
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await call(client)
        except (RedisError, OSError, TimeoutError) as exc:
            self.record_failure(operation, exc)
            raise RedisUnavailable(f"redis {operation} failed: {exc!r}") from exc
        self._recovered()
        return result

    def record_failure(self, operation: str, exc: BaseException) -> None:
        """Open the circuit; counted every time (`on_error`), logged once per outage (the probes that find
        Redis still away would flood the log) and once when it is back."""
        self._open_until = time.monotonic() + self.retry_after_s
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        if not self._down:
            self._down = True
            log.warning(
                {
                    "event": "redis_unavailable",
                    "operation": operation,
                    "error": self.last_error,
                    "retry_after_s": self.retry_after_s,
                }
            )
        if self._on_error is not None:
            self._on_error(operation)

    async def ping(self) -> bool:
        """Readiness probe: bypasses the circuit so /readyz sees recovery as soon as it happens."""
        if self.client is None:
            return True
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.client.ping()
        except (RedisError, OSError, TimeoutError) as exc:
            self.record_failure("ping", exc)
            return False
        self._recovered()
        return True

    def _recovered(self) -> None:
        self._open_until = 0.0
        if self._down:
            self._down = False
            log.warning({"event": "redis_recovered", "after_error": self.last_error})

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes: replies are not decoded on the hot path)."""
    return value.decode() if isinstance(value, bytes) else value


async def flush_staged(redis: RedisState, operation: str, stagers: Sequence[Stager]) -> bool:
    """One pipeline with everything `stagers` queue; on failure each stager gets its data back."""
    restores: list[Callable[[], None]] = []

    async def write(client: aioredis.Redis) -> None:
        async with client.pipeline(transaction=False) as pipe:
            restores.extend(stage(pipe) for stage in stagers)
            if len(pipe):
                await pipe.execute()

    try:
        await redis.run(operation, write)
    except RedisUnavailable:
        for restore in restores:
            restore()
        return False
    return True
