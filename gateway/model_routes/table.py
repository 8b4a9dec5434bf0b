"""Each replica's copy of the routes: read on the request path without I/O, reloaded within
`poll_s` of a change on any replica (one GET of the global change counter per poll)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from gateway.background import cancel_and_wait, every
from gateway.model_routes.spec import StoredRoute
from gateway.model_routes.store import RouteStore
from gateway.observability.failures import FailureLog
from gateway.state.redis import RedisUnavailable


class RouteTable:
    def __init__(
        self,
        store: RouteStore,
        *,
        failures: FailureLog,
        poll_s: float = 0.5,
        on_reload: Callable[[dict[str, StoredRoute]], None] | None = None,
    ) -> None:
        self.store = store
        self.failures = failures
        self.poll_s = poll_s
        self.on_reload = on_reload
        self.routes: dict[str, StoredRoute] = {}
        self._stamp = -1
        self._task: asyncio.Task[None] | None = None

    def get(self, name: str) -> StoredRoute | None:
        return self.routes.get(name)

    async def reload(self) -> None:
        """Read every route now (after a change made here, and whenever the change counter moved)."""
        stamp = await self.store.stamp()
        self.routes = await self.store.all()
        self._stamp = stamp
        if self.on_reload is not None:
            self.on_reload(self.routes)

    async def _follow(self) -> None:
        if await self.store.stamp() != self._stamp:
            await self.reload()

    async def start(self) -> None:
        with contextlib.suppress(RedisUnavailable):  # logged and counted where it failed; the follower retries
            await self.reload()
        # Redis away: keep serving the routes last read.
        self._task = every(
            self.poll_s, self._follow, name="route_table", failures=self.failures, quiet=(RedisUnavailable,)
        )

    async def aclose(self) -> None:
        await cancel_and_wait([self._task])
