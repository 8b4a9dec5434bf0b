"""Adapters on vLLM: loaded at run time on first use, unloaded once no gateway process uses them.

- Each version gets its own name, `NAME-<digest8>` (NAME without its `:tag`): vLLM keys its prefix
  cache by adapter name, so a new version under an old name would reuse the old version's prefixes.
- Loading is idempotent and done on first use, one load per name at a time. A restarted server has
  forgotten its run-time adapters and answers 404: the adapter is loaded again and the request retried once.
- A replica that holds an adapter is preferred: a replica advertises a registered adapter only when it
  holds it or no replica does (the plans of one pool share what each holds: `HeldAdapters`).
- `max_adapters` (the replica's `--max-loras`/`--max-cpu-loras`) caps what the gateway loads there; a
  replica at its cap refuses with a 503 that does not count against it, and the next is tried.
- Versions no registered adapter uses any more (removed, or replaced by a new version) are unloaded
  once their last request has ended on every gateway process: each request holds a lease in Redis
  while it runs (leases.py), and the process that finds the version stale (at its discovery, or when its
  own last request on it ends) unloads it only when no lease is left. Only names of the `NAME-<8 hex>`
  form are ever unloaded, so adapters the server was started with (`--lora-modules`) are left alone.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter

from gateway.adapters.leases import AdapterLeases
from gateway.adapters.plan import AdapterPlan
from gateway.adapters.registry import Adapter, AdapterRegistry
from gateway.backends.base import Extra
from gateway.backends.vllm import VllmBackend
from gateway.errors import BackendClientError, UpstreamError
from gateway.observability.failures import FailureLog

log = logging.getLogger("gateway.adapters")
VERSIONED = re.compile(r"^.+-[0-9a-f]{8}$")


class AdapterCapacityFull(UpstreamError):
    """This replica holds as many adapters as it may; another replica may still take it."""

    status = 503
    type = "service_unavailable"
    code = "adapter_capacity_full"
    counts_as_failure = False


class HeldAdapters:
    """What each vLLM replica of one pool holds (versioned names), as its plan last saw it."""

    def __init__(self) -> None:
        self.by_replica: dict[str, set[str]] = {}

    def held_anywhere(self, version: str) -> bool:
        return any(version in held for held in self.by_replica.values())


def versioned_name(adapter: Adapter) -> str:
    """`orders` and `orders:v2` holding the same weights share one loaded copy: NAME-<digest8>."""
    return f"{adapter.name.split(':', 1)[0]}-{adapter.short_digest}"


class VllmAdapters(AdapterPlan):
    def __init__(
        self,
        driver: VllmBackend,
        *,
        registry: AdapterRegistry,
        leases: AdapterLeases,
        held: HeldAdapters,
        failures: FailureLog,
    ) -> None:
        super().__init__(replica=driver.name, registry=registry)
        self.driver = driver
        self.leases = leases
        self.held = held
        self.failures = failures
        self.server = driver.spec.url  # leases name the server by its URL, the same on every gateway
        self.loaded: set[str] = set()  # versioned names the server holds, as far as we know
        self._current: dict[str, str] = {}  # adapter name -> its current versioned name
        self._in_flight: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- discovery ---------------------------------------------------------------------------

    async def discover(self) -> list[str]:
        cards = await self.driver.model_cards()
        self.bases = frozenset(c["id"] for c in cards if not c.get("parent"))
        self.loaded = {c["id"] for c in cards if c.get("parent")}
        self._current = {a.name: versioned_name(a) for a in await self.registered("peft")}
        self.held.by_replica[self.replica] = set(self.loaded)
        for stale in self._stale():
            await self._unload_if_drained(stale)
        return sorted(self.bases | {name for name, version in self._current.items() if self._advertised(version)})

    def offers(self, model: str) -> bool:
        """An adapter goes to the replica holding it, as soon as one does (not only after the next discovery)."""
        version = self._current.get(model)
        return version is None or self._advertised(version)

    def _advertised(self, version: str) -> bool:
        """Held here, or held by no replica of this pool (then any replica may load it)."""
        return version in self.loaded or not self.held.held_anywhere(version)

    def _stale(self) -> set[str]:
        return {v for v in self.loaded if VERSIONED.match(v) and v not in self._current.values()}

    # -- per request -------------------------------------------------------------------------

    async def target(self, model: str) -> tuple[str, Extra]:
        if model in self.bases:
            return model, None
        adapter = await self.adapter(model)
        if adapter is None or adapter.base not in self.bases or "peft" not in adapter.files:
            raise self.unknown(model)
        version = versioned_name(adapter)
        self._current[adapter.name] = version
        if version not in self.loaded:
            await self._load(adapter, version)
        return version, None

    async def missing(self, model: str, target: str) -> bool:
        if target in self.bases:
            return False
        log.info("backend %s lost adapter %s (restarted?); loading it again", self.replica, target)
        self._forget(target)
        return True

    async def began(self, target: str) -> str | None:
        if target in self.bases:
            return None
        self._in_flight[target] += 1
        try:  # the lease is in Redis before the request is sent, so no other gateway unloads under it
            return await self.leases.begin(self.server, target)
        except BaseException:
            self.ended(target, None)
            raise

    def ended(self, target: str, lease: str | None) -> None:
        if target in self.bases:
            return
        self._in_flight[target] -= 1
        if self._in_flight[target] <= 0:
            del self._in_flight[target]
        if lease is None and (self._in_flight[target] or target not in self._stale()):
            return
        # Off the request path: give the lease back; a version replaced while it served may be drained now.
        task = asyncio.get_running_loop().create_task(self._after(target, lease))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _after(self, target: str, lease: str | None) -> None:
        try:
            await self.leases.end(self.server, target, lease)
            await self._unload_if_drained(target)
        except Exception as exc:  # noqa: BLE001 - off the request path: nobody else would see it
            self.failures.record("adapter_unload", exc, traceback=True, replica=self.replica, adapter=target)

    # -- load / unload -----------------------------------------------------------------------

    async def _load(self, adapter: Adapter, version: str) -> None:
        async with self._locks.setdefault(version, asyncio.Lock()):
            if version in self.loaded:
                return
            if self.driver.max_adapters is not None and len(self.loaded) >= self.driver.max_adapters:
                for stale in self._stale():
                    await self._unload_if_drained(stale)
                if len(self.loaded) >= self.driver.max_adapters:
                    raise AdapterCapacityFull(
                        f"backend {self.replica} holds {len(self.loaded)} adapters, its limit (max_adapters); "
                        f"none can be unloaded to make room for {adapter.name!r}"
                    )
            await self.driver.load_adapter(version, adapter.files["peft"])
            self.loaded.add(version)
            self.held.by_replica.setdefault(self.replica, set()).add(version)
            log.info("backend %s loaded adapter %s from %s", self.replica, version, adapter.files["peft"])

    async def _unload_if_drained(self, version: str) -> None:
        """Unload a stale version once no request runs on it here nor on any other gateway process."""
        if version not in self._stale():
            return
        async with self._locks.setdefault(version, asyncio.Lock()):
            if (
                version in self._stale()
                and not self._in_flight[version]
                and await self.leases.drained(self.server, version)
            ):
                await self._unload(version)

    async def _unload(self, version: str) -> None:
        try:
            await self.driver.unload_adapter(version)
        except (UpstreamError, BackendClientError) as exc:
            self.failures.record("adapter_unload", exc, replica=self.replica, adapter=version)
            return
        self._forget(version)
        log.info("backend %s unloaded adapter %s", self.replica, version)

    def _forget(self, version: str) -> None:
        self.loaded.discard(version)
        self.held.by_replica.get(self.replica, set()).discard(version)
