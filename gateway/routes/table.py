"""Each replica's copy of the routes: read on the request path without I/O, reloaded within
`poll_s` of a change on any replica (one GET of the global change counter per poll)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gateway.tasks import cancel_and_wait
from gateway.redis_state import RedisUnavailable
from gateway.routes.spec import StoredRoute
from gateway.routes.store import RouteStore

log = logging.getLogger("gateway.routes")


class RouteTable:
    def __init__(self, store: RouteStore, *, poll_s: float = 0.5,
                 on_reload: Callable[[dict[str, StoredRoute]], None] | None = None) -> None:
        self.store = store
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

    async def start(self) -> None:
        with contextlib.suppress(RedisUnavailable):
            await self.reload()
        self._task = asyncio.create_task(self._follow())

    async def aclose(self) -> None:
        await cancel_and_wait([self._task])

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                if await self.store.stamp() != self._stamp:
                    await self.reload()
            except RedisUnavailable:
                pass  # keep serving the routes last read; the circuit counts the failure
            except Exception:  # never let the follower die: routes would freeze
                log.exception("reloading routes failed")
