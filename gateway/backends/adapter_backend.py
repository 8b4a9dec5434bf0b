"""What the adapter-aware drivers (llama.cpp, vLLM) share: the registry, and calls made on behalf of an
adapter's public name.

A request names an adapter by its public name (`orders`); each driver turns that into its server's
terms in `_target` (llama.cpp: the base model plus a per-request `lora` list; vLLM: the adapter's
versioned name, loaded first if needed). Answers carry the public name back in `model`, so clients
never see a server's internal names. A server that answers "no such model" before any byte of the
answer came is given one more try when the driver says it can repair that (`_missing`: vLLM reloads
an adapter a restart dropped).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

from gateway.adapters.in_flight import SharedInFlight
from gateway.adapters.registry import Adapter, AdapterRegistry
from gateway.backends.base import ChunkBatch
from gateway.backends.http import BackendHTTP
from gateway.backends.openai_compat import OpenAICompatBackend
from gateway.errors import ReplicaLacksModel
from gateway.protocol import ChatCompletionRequest, CompletionRequest
from gateway.redis_state import RedisState, RedisUnavailable
from gateway.settings import BackendSpec, Settings

log = logging.getLogger("gateway.adapters")

Unary = Callable[[Any, str], Awaitable[dict[str, Any]]]
Stream = Callable[[Any, str, float | None], AsyncIterator[ChunkBatch]]


class AdapterBackend(OpenAICompatBackend):
    """An OpenAI-compatible server that serves LoRA adapters of its base model(s)."""

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        super().__init__(spec, settings)
        headers = {"authorization": f"Bearer {spec.api_key.get_secret_value()}"} if spec.api_key else {}
        # The adapter endpoints live beside /v1 (llama.cpp) or under it (vLLM): a client at the root.
        self._admin = BackendHTTP(spec.url, name=self.name, connect_timeout_s=settings.connect_timeout_s,
                                  max_connections=4, headers=headers)
        self.registry: AdapterRegistry | None = None
        self.shared: dict[str, set[str]] = {}  # replica name -> what it holds, shared by one pool's drivers
        # Requests in flight per adapter version across every gateway process (Redis; this one alone without).
        self.in_flight = SharedInFlight(RedisState(None), lease_s=settings.total_timeout_s + 60)
        self._known: dict[str, Adapter] = {}  # last registry read, by name
        self.bases: frozenset[str] = frozenset()

    def attach_adapters(self, registry: AdapterRegistry, shared: dict[str, set[str]],
                        in_flight: SharedInFlight | None = None) -> None:
        """Called once at start-up, before discovery (gateway/app.py)."""
        self.registry = registry
        self.shared = shared
        if in_flight is not None:
            self.in_flight = in_flight

    async def aclose(self) -> None:
        await self._admin.aclose()
        await super().aclose()

    async def registered(self, bases: frozenset[str], file_kind: str) -> list[Adapter]:
        """The registry's adapters this replica could serve: trained on one of its bases, with files of
        `file_kind`. Redis down: the last list read (adapters keep routing through a Redis outage)."""
        if self.registry is not None:
            try:
                self._known = {a.name: a for a in await self.registry.list()}
            except RedisUnavailable as exc:
                log.warning("adapter registry unavailable, using the last list read: %s", exc.message)
        return [a for a in self._known.values() if a.base in bases and file_kind in a.files]

    async def adapter(self, model: str) -> Adapter | None:
        """The adapter behind public name `model`, read again from the registry when not known yet."""
        found = self._known.get(model)
        if found is None and model not in self.bases:
            await self.registered(self.bases, "")
            found = self._known.get(model)
        return found

    def version(self, model: str) -> str | None:
        """The digest of the adapter this driver sends for `model` (the registry record it last read)."""
        adapter = self._known.get(model)
        return f"sha256:{adapter.digest}" if adapter is not None and model not in self.bases else None

    # -- per request -------------------------------------------------------------------------

    async def _target(self, model: str) -> str:
        """The model name to send for public name `model` (and whatever the server needs first)."""
        return model

    async def _missing(self, model: str, target: str) -> bool:
        """The server said it lacks `target`: repair that and return True to try once more."""
        return False

    async def _began(self, target: str) -> str | None:
        """A request on `target` starts; what it returns is handed to `_ended` (if this raises, it undid itself)."""
        return None

    def _ended(self, target: str, lease: str | None) -> None:
        return None

    def _unknown(self, model: str) -> ReplicaLacksModel:
        return ReplicaLacksModel(f"backend {self.name} does not serve {model!r} (any more)")

    async def _unary(self, call: Unary, req: Any, model: str) -> dict[str, Any]:
        for attempt in (1, 2):
            target = await self._target(model)
            lease = await self._began(target)
            try:
                result = await call(req, target)
            except ReplicaLacksModel:
                if attempt == 2 or not await self._missing(model, target):
                    raise
                continue
            finally:
                self._ended(target, lease)
            result["model"] = model
            return result
        raise AssertionError("unreachable")

    async def _stream(self, call: Stream, req: Any, model: str, deadline: float | None) -> AsyncIterator[ChunkBatch]:
        for attempt in (1, 2):
            target = await self._target(model)
            lease = await self._began(target)
            try:
                async with aclosing(call(req, target, deadline)) as batches:
                    try:
                        first = await anext(batches)
                    except ReplicaLacksModel:
                        if attempt == 2 or not await self._missing(model, target):
                            raise
                        continue
                    except StopAsyncIteration:
                        return
                    yield _relabel(first, model)
                    async for batch in batches:
                        yield _relabel(batch, model)
                    return
            finally:
                self._ended(target, lease)

    async def chat(self, req: ChatCompletionRequest, model: str) -> dict[str, Any]:
        return await self._unary(super().chat, req, model)

    def chat_stream(self, req: ChatCompletionRequest, model: str,
                    deadline: float | None = None) -> AsyncIterator[ChunkBatch]:
        return self._stream(super().chat_stream, req, model, deadline)

    async def complete(self, req: CompletionRequest, model: str) -> dict[str, Any]:
        return await self._unary(super().complete, req, model)

    def complete_stream(self, req: CompletionRequest, model: str,
                        deadline: float | None = None) -> AsyncIterator[ChunkBatch]:
        return self._stream(super().complete_stream, req, model, deadline)


def _relabel(batch: ChunkBatch, model: str) -> ChunkBatch:
    for chunk in batch:
        if "model" in chunk:
            chunk["model"] = model
    return batch
