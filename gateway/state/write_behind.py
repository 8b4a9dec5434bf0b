"""Writes that wait for the answer: what the request path records in memory (usage, limit
reconciliation, cache entries, route signals) goes to Redis in one pipeline after the client has its
answer, many answers per pipeline under load.

Each source is a stager: `stage(pipe)` queues its buffered writes on the pipeline and returns a
callback that puts them back if the pipeline fails, and `has_pending` says whether it holds any.
While Redis is unavailable the writes stay buffered (each source bounds its own buffer) and go out
with the next successful flush.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.state.redis import RedisState, flush_staged


class Source(Protocol):
    @property
    def has_pending(self) -> bool: ...

    def stage(self, pipe: Any) -> Callable[[], None]: ...


class WriteBehind:
    def __init__(self, redis: RedisState, sources: Sequence[Source], *, operation: str = "account") -> None:
        self.redis = redis
        self.sources = tuple(sources)
        self.operation = operation
        self._writing: asyncio.Future[bool] | None = None

    def pending(self) -> bool:
        return any(source.has_pending for source in self.sources)

    async def flush(self) -> None:
        """Return once what was recorded so far is in Redis (or kept buffered, Redis being unavailable).

        One pipeline in flight at a time: answers settled while it runs wait for it and then share the
        next one, so under load a write carries many answers instead of each paying a round trip."""
        if not self.redis.configured:
            return
        while self.pending():
            if self._writing is None:
                self._writing = asyncio.ensure_future(self._write())
            writing = self._writing
            await asyncio.shield(writing)
            if not writing.result():
                return  # Redis unavailable: the data stays buffered for a later flush

    async def _write(self) -> bool:
        try:
            return await flush_staged(self.redis, self.operation, [source.stage for source in self.sources])
        finally:
            self._writing = None
