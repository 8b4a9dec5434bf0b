"""vLLM with LoRA adapters loaded at run time (`kind: vllm`).

vLLM (started with `--enable-lora`, `--max-loras`, and `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) loads
an adapter with `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`, drops it with
`POST /v1/unload_lora_adapter {"lora_name"}`, lists loaded adapters in `/v1/models` (cards with a
`parent`), and a request selects one by naming it as `model`.

- Each version gets its own name, `NAME-<digest8>` (NAME without its `:tag`): vLLM keys its prefix
  cache by adapter name, so a new version under an old name would reuse the old version's prefixes.
- Loading is idempotent ("has already been loaded" is success) and done on first use, one load per
  name at a time. A restarted server has forgotten its run-time adapters and answers 404: the driver
  loads the adapter again and retries once.
- A replica that holds an adapter is preferred: a replica advertises a registered adapter only when it
  holds it or no replica does (the drivers of one pool share what each holds).
- `max_adapters` (the replica's `--max-loras`/`--max-cpu-loras`) caps what the gateway loads there; a
  replica at its cap refuses with a 503 that does not count against it, and the next is tried.
- Versions no registered adapter uses any more (removed, or replaced by a new version) are unloaded
  once their last request has ended on every gateway process: each request holds a lease in Redis
  while it runs (gateway/adapters/in_flight.py), and the process that finds the version stale (at its
  discovery, or when its own last request on it ends) unloads it only when no lease is left. Only names
  of the `NAME-<8 hex>` form are ever unloaded, so adapters the server was started with
  (`--lora-modules`) are left alone.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from typing import Any

import orjson

from gateway.adapters.registry import Adapter
from gateway.backends.adapter_backend import AdapterBackend
from gateway.errors import BackendClientError, ReplicaLacksModel, UpstreamError

log = logging.getLogger("gateway.adapters")
VERSIONED = re.compile(r"^.+-[0-9a-f]{8}$")


class AdapterCapacityFull(UpstreamError):
    """This replica holds as many adapters as it may; another replica may still take it."""

    status = 503
    type = "service_unavailable"
    code = "adapter_capacity_full"
    counts_as_failure = False


def versioned_name(adapter: Adapter) -> str:
    """`orders` and `orders:v2` holding the same weights share one loaded copy: NAME-<digest8>."""
    return f"{adapter.name.split(':', 1)[0]}-{adapter.short_digest}"


class VllmBackend(AdapterBackend):
    kind = "vllm"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_adapters = self.spec.max_adapters
        self.loaded: set[str] = set()  # versioned names the server holds, as far as we know
        self._current: dict[str, str] = {}  # adapter name -> its current versioned name
        self._in_flight: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- discovery ---------------------------------------------------------------------------

    async def list_models(self) -> list[str]:
        listing = await self._http.json("GET", "/models")
        cards = [c for c in listing.get("data", []) if isinstance(c, dict) and "id" in c]
        self.bases = frozenset(c["id"] for c in cards if not c.get("parent"))
        self.loaded = {c["id"] for c in cards if c.get("parent")}
        self._current = {a.name: versioned_name(a) for a in await self.registered(self.bases, "peft")}
        self.shared[self.name] = set(self.loaded)
        for stale in self._stale():
            await self._unload_if_drained(stale)
        return sorted(self.bases | {name for name, version in self._current.items() if self._advertised(version)})

    def offers(self, model: str) -> bool:
        """An adapter goes to the replica holding it, as soon as one does (not only after the next discovery)."""
        version = self._current.get(model)
        return version is None or self._advertised(version)

    def _advertised(self, version: str) -> bool:
        """Held here, or held by no replica of this pool (then any replica may load it)."""
        return version in self.loaded or not any(version in held for held in self.shared.values())

    def _stale(self) -> set[str]:
        return {v for v in self.loaded if VERSIONED.match(v) and v not in self._current.values()}

    # -- per request -------------------------------------------------------------------------

    async def _target(self, model: str) -> str:
        if model in self.bases:
            return model
        adapter = await self.adapter(model)
        if adapter is None or adapter.base not in self.bases or "peft" not in adapter.files:
            raise self._unknown(model)
        version = versioned_name(adapter)
        self._current[adapter.name] = version
        if version not in self.loaded:
            await self._load(adapter, version)
        return version

    async def _missing(self, model: str, target: str) -> bool:
        if target in self.bases:
            return False
        log.info("backend %s lost adapter %s (restarted?); loading it again", self.name, target)
        self._forget(target)
        return True

    async def _began(self, target: str) -> str | None:
        if target in self.bases:
            return None
        self._in_flight[target] += 1
        try:  # the lease is in Redis before the request is sent, so no other gateway unloads under it
            return await self.in_flight.begin(self.spec.url, target)
        except BaseException:
            self._ended(target, None)
            raise

    def _ended(self, target: str, lease: str | None) -> None:
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
        await self.in_flight.end(self.spec.url, target, lease)
        await self._unload_if_drained(target)

    # -- load / unload -----------------------------------------------------------------------

    async def _load(self, adapter: Adapter, version: str) -> None:
        async with self._locks.setdefault(version, asyncio.Lock()):
            if version in self.loaded:
                return
            if self.max_adapters is not None and len(self.loaded) >= self.max_adapters:
                for stale in self._stale():
                    await self._unload_if_drained(stale)
                if len(self.loaded) >= self.max_adapters:
                    raise AdapterCapacityFull(
                        f"backend {self.name} holds {len(self.loaded)} adapters, its limit (max_adapters); "
                        f"none can be unloaded to make room for {adapter.name!r}")
            body = orjson.dumps({"lora_name": version, "lora_path": adapter.files["peft"]})
            try:
                await self._admin.read("POST", "/v1/load_lora_adapter", body)
            except BackendClientError as exc:
                if "already been loaded" not in exc.message:
                    raise
            self.loaded.add(version)
            self.shared.setdefault(self.name, set()).add(version)
            log.info("backend %s loaded adapter %s from %s", self.name, version, adapter.files["peft"])

    async def _unload_if_drained(self, version: str) -> None:
        """Unload a stale version once no request runs on it here nor on any other gateway process."""
        if version not in self._stale():
            return
        async with self._locks.setdefault(version, asyncio.Lock()):
            if (version in self._stale() and not self._in_flight[version]
                    and await self.in_flight.drained(self.spec.url, version)):
                await self._unload(version)

    async def _unload(self, version: str) -> None:
        try:
            await self._admin.read("POST", "/v1/unload_lora_adapter", orjson.dumps({"lora_name": version}))
        except ReplicaLacksModel:
            pass  # "cannot be found": gone already
        except (UpstreamError, BackendClientError) as exc:
            log.warning("backend %s: unloading adapter %s failed: %s", self.name, version, exc.message)
            return
        self._forget(version)
        log.info("backend %s unloaded adapter %s", self.name, version)

    def _forget(self, version: str) -> None:
        self.loaded.discard(version)
        self.shared.get(self.name, set()).discard(version)
