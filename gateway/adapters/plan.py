"""What one replica's adapters are, as its plan sees them: the registry's adapters it can serve, the
name to send for each, and what happens around a request. The base class reads the registry; one
subclass per server kind (llamacpp.py, vllm.py) says how adapters are served there."""

from __future__ import annotations

import logging

from gateway.adapters.registry import Adapter, AdapterRegistry
from gateway.backends.base import Extra
from gateway.errors import ReplicaLacksModel
from gateway.state.redis import RedisUnavailable

log = logging.getLogger("gateway.adapters")


class AdapterPlan:
    def __init__(self, *, replica: str, registry: AdapterRegistry) -> None:
        self.replica = replica
        self.registry = registry
        self.bases: frozenset[str] = frozenset()  # the base models the replica serves
        self._known: dict[str, Adapter] = {}  # the last registry read, by name

    async def discover(self) -> list[str]:
        """Every model the replica serves now: its bases and the adapters it can serve."""
        raise NotImplementedError

    async def registered(self, file_kind: str) -> list[Adapter]:
        """The registry's adapters this replica could serve: trained on one of its bases, with files of
        `file_kind` (any, when empty). Redis away: the last list read (adapters keep routing meanwhile)."""
        try:
            self._known = {a.name: a for a in await self.registry.list()}
        except RedisUnavailable:
            pass  # logged and counted where it failed
        return [a for a in self._known.values() if a.base in self.bases and (not file_kind or file_kind in a.files)]

    async def adapter(self, model: str) -> Adapter | None:
        """The adapter behind public name `model`, read again from the registry when not known yet."""
        found = self._known.get(model)
        if found is None and model not in self.bases:
            await self.registered("")
            found = self._known.get(model)
        return found

    def offers(self, model: str) -> bool:
        return True

    def version(self, model: str) -> str | None:
        """The digest of the adapter served for `model` (the registry record last read)."""
        adapter = self._known.get(model)
        return f"sha256:{adapter.digest}" if adapter is not None and model not in self.bases else None

    async def target(self, model: str) -> tuple[str, Extra]:
        """The model name to send for public name `model`, and the body fields that go with it."""
        return model, None

    async def missing(self, model: str, target: str) -> bool:
        """The server said it lacks `target`: repair that and return True to try once more."""
        return False

    async def began(self, target: str) -> str | None:
        """A request on `target` starts; what it returns is handed to `ended` (if this raises, it undid itself)."""
        return None

    def ended(self, target: str, lease: str | None) -> None:
        return None

    def unknown(self, model: str) -> ReplicaLacksModel:
        return ReplicaLacksModel(f"backend {self.replica} does not serve {model!r} (any more)")
