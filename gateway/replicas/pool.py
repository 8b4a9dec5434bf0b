"""Replicas, model discovery, and picking a replica among closed circuits: by a routing policy,
least requests in flight (the default) or prefix affinity (gateway/replicas/affinity.py).

The replicas are the configured backends, plus one per address of each `discover: dns` backend's host,
followed as addresses come and go: a new one is used once it listed its models, one that left gets no
new request and is closed when its last one ended.

`open()` is the failover loop: it tries replicas one after another until one *starts* answering
(for a stream: yields its first chunk). Once that happened the caller owns the `Lease` and no
retry is possible any more: bytes may already be on their way to the client. A replica with a
`max_concurrency` takes no more requests than that; when every replica of a model is full, a request
waits for a slot (counted in gateway_requests_waiting) up to GATEWAY_QUEUE_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from prometheus_client import Gauge

from gateway.backends.base import Backend
from gateway.background import cancel_and_wait, every
from gateway.errors import (
    BackendClientError,
    BackendUnavailable,
    ModelNotFound,
    NoHealthyBackend,
    ReplicasBusy,
    UpstreamError,
)
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.replicas.affinity import Placements, pick_bounded
from gateway.replicas.breaker import CircuitBreaker, CircuitState
from gateway.replicas.dns import AddressBook, LookupFailed, NameNotFound, replica_name
from gateway.settings import BackendSpec, RoutingPolicy, Settings

log = logging.getLogger("gateway.pool")
T = TypeVar("T")
MakeBackend = Callable[[BackendSpec], Backend]


def _show_state(gauge: Gauge) -> Callable[[CircuitState], None]:
    """A breaker's state changes shown on its replica's gateway_circuit_state series."""
    return lambda state: gauge.set(int(state))


@dataclass(eq=False)
class Replica:
    backend: Backend
    breaker: CircuitBreaker
    slots: Slots
    models: frozenset[str] = frozenset()
    up: bool = False
    in_flight: int = 0
    name: str = field(init=False)
    group: str | None = None  # the `discover: dns` backend it is an address of
    limit: int | None = field(init=False)  # requests at once (max_concurrency), None: no limit

    def __post_init__(self) -> None:
        self.name = self.backend.name
        self.limit = self.backend.spec.max_concurrency

    @property
    def full(self) -> bool:
        return self.limit is not None and self.in_flight >= self.limit


class Slots:
    """Where a request waits for a replica to finish one: `freed()` wakes every waiter, which looks again."""

    def __init__(self) -> None:
        self._freed = asyncio.Event()

    def freed(self) -> None:
        freed, self._freed = self._freed, asyncio.Event()
        freed.set()

    async def wait(self, timeout_s: float) -> bool:
        """False when nothing was freed within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._freed.wait()
        except TimeoutError:
            return False
        return True


@dataclass(eq=False)
class Lease:
    """One replica held for one request; `done()` must be called exactly once."""

    replica: Replica
    in_flight_gauge: Any  # the replica's gateway_requests_in_flight series for this model
    _open: bool = field(default=True)

    @property
    def backend(self) -> Backend:
        return self.replica.backend

    def done(self, *, failed: bool = False, cancelled: bool = False) -> None:
        if not self._open:
            return
        self._open = False
        self.replica.in_flight -= 1
        self.in_flight_gauge.dec()
        self.replica.slots.freed()
        breaker = self.replica.breaker
        if cancelled:
            breaker.release_probe()
        elif failed:
            breaker.record_failure()
        else:
            breaker.record_success()


class BackendPool:
    def __init__(
        self,
        settings: Settings,
        metrics: GatewayMetrics,
        make_backend: MakeBackend,
        *,
        failures: FailureLog,
        addresses: AddressBook | None = None,
    ) -> None:
        """`make_backend`: a replica's driver from its spec (gateway/replicas/build.py); `addresses`: resolves
        the hosts of `discover: dns` backends."""
        self._settings = settings
        self._metrics = metrics
        self._failures = failures
        self._make = make_backend
        self._addresses = addresses or AddressBook(settings.dns_servers)
        self._slots = Slots()
        self.replicas: list[Replica] = []
        self._groups = [spec for spec in settings.backends if spec.discover == "dns"]
        for spec in settings.backends:
            if spec.discover == "static":
                self._add(spec)
        self._aliases = dict(settings.model_aliases)
        self._rotation = itertools.count()
        self._placements = Placements(settings.affinity_memory)  # prefix_affinity: where each recent key went
        self._last_refresh = 0.0
        self._refresh_lock = asyncio.Lock()
        self._asked: asyncio.Future[None] | None = None  # the refresh an unknown model's requests wait for
        self._tasks: list[asyncio.Task[None]] = []
        self._leaving: set[asyncio.Task[None]] = set()  # replicas that left, closed once their requests ended
        self._dns_poked = asyncio.Event()
        self._last_dns = 0.0

    def _add(self, spec: BackendSpec, group: str | None = None) -> Replica:
        backend = self._make(spec)
        self._metrics.register_backend(backend.name)
        breaker = CircuitBreaker(
            failure_threshold=self._settings.breaker_failures,
            reset_after_s=self._settings.breaker_reset_s,
            on_change=_show_state(self._metrics.circuit_state.labels(backend.name)),
        )
        replica = Replica(backend=backend, breaker=breaker, slots=self._slots, group=group)
        self.replicas.append(replica)
        return replica

    # -- discovery -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.follow_dns()
        await self.refresh()
        self._tasks.append(
            every(self._settings.discovery_interval_s, self.refresh, name="model_discovery", failures=self._failures)
        )
        if self._groups:
            self._tasks.append(asyncio.create_task(self._follow_dns_loop(), name="dns_discovery"))

    async def aclose(self) -> None:
        await cancel_and_wait([*self._tasks, *self._leaving])
        await asyncio.gather(*(r.backend.aclose() for r in self.replicas), return_exceptions=True)

    async def refresh(self) -> None:
        """Ask every replica what it serves. A replica that fails keeps its last list (so a dead
        replica's models still route - and fail over or answer 503 - rather than turn into 404s)."""
        async with self._refresh_lock:
            await asyncio.gather(*(self._refresh_one(r) for r in list(self.replicas)))
            self._last_refresh = time.monotonic()

    async def _refresh_one(self, replica: Replica) -> None:
        try:
            async with asyncio.timeout(self._settings.discovery_timeout_s):
                names = await replica.backend.list_models()
        except (UpstreamError, BackendClientError, TimeoutError) as exc:
            replica.up = False
            log.warning(
                "model discovery failed for %s: %s",
                replica.name,
                exc.__class__.__name__ if isinstance(exc, TimeoutError) else exc,
            )
        else:
            replica.models = frozenset(names)
            replica.up = True
            for model in names:
                self._metrics.register_model(model, replica.name)
        if replica in self.replicas:  # it may have left meanwhile
            self._metrics.backend_up.labels(replica.name).set(1 if replica.up else 0)

    # -- replicas found by DNS ---------------------------------------------------------------

    async def _follow_dns_loop(self) -> None:
        """A round every GATEWAY_DNS_INTERVAL_S, or sooner (at most once a second) when a connection to a
        replica failed: it may have left."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settings.dns_interval_s):
                    await self._dns_poked.wait()
            self._dns_poked.clear()
            await asyncio.sleep(max(0.0, self._last_dns + 1.0 - time.monotonic()))
            try:
                await self.follow_dns()
            except Exception as exc:  # noqa: BLE001 - recorded; the next round may succeed
                self._failures.record("dns_discovery", exc, traceback=True)

    async def follow_dns(self) -> None:
        """Resolve every `discover: dns` backend's host once: a replica per address, added or retired."""
        self._last_dns = time.monotonic()
        for spec in self._groups:
            host = urlsplit(spec.url).hostname or ""
            try:
                addresses = await self._addresses.addresses(host)
            except NameNotFound as exc:
                addresses = []
                log.warning("DNS discovery: %s; no replica of %s left", exc, spec.label)
            except LookupFailed as exc:
                log.warning("DNS discovery: %s; keeping the %s replicas known so far", exc, spec.label)
                continue
            await self._apply(spec, addresses)

    async def _apply(self, spec: BackendSpec, addresses: list[str]) -> None:
        wanted = {replica_name(spec.label, a): a for a in addresses}
        current = {r.name: r for r in self.replicas if r.group == spec.label}
        for name, replica in current.items():
            if name not in wanted:
                self._retire(replica)
        added = [
            self._add(spec.model_copy(update={"name": name, "address": address}), group=spec.label)
            for name, address in wanted.items()
            if name not in current
        ]
        for replica in added:
            log.info("DNS discovery: %s joined", replica.name)
        await asyncio.gather(*(self._refresh_one(r) for r in added))  # used once it listed its models

    def _retire(self, replica: Replica) -> None:
        """No new request goes to `replica`; it is closed once those in flight ended (or their deadline)."""
        self.replicas.remove(replica)
        log.info("DNS discovery: %s left (%d requests in flight finish there)", replica.name, replica.in_flight)

        async def close_when_idle() -> None:
            deadline = time.monotonic() + self._settings.total_timeout_s
            while replica.in_flight > 0 and time.monotonic() < deadline:
                await self._slots.wait(deadline - time.monotonic())
            await replica.backend.aclose()
            self._metrics.forget_backend(replica.name, replica.models)

        task = asyncio.create_task(close_when_idle(), name=f"retire {replica.name}")
        self._leaving.add(task)
        task.add_done_callback(self._leaving.discard)

    def _poke_dns(self, replica: Replica) -> None:
        if replica.group is not None:
            self._dns_poked.set()

    # -- routing ---------------------------------------------------------------------------

    def models(self) -> dict[str, list[str]]:
        """Every model any replica serves -> the replicas serving it."""
        found: dict[str, list[str]] = {}
        for r in self.replicas:
            for m in r.models:
                found.setdefault(m, []).append(r.name)
        return found

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def _lookup(self, name: str) -> str | None:
        name = self._aliases.get(name, name)
        for candidate in (name, f"{name}:latest"):
            if any(candidate in r.models for r in self.replicas):
                return candidate
        return None

    async def resolve(self, name: str) -> str:
        """Client-facing name or alias -> the model name the replicas know. Unknown: the replicas are asked
        again (a model pushed a moment ago should not be a 404), at most once a second, one refresh shared by
        every request waiting for it."""
        found = self._lookup(name)
        if found is None:
            await self._refresh_shared()
            found = self._lookup(name)
        if found is None:
            raise ModelNotFound(f"The model '{name}' does not exist or no backend serves it", param="model")
        return found

    async def _refresh_shared(self) -> None:
        if self._asked is None or self._asked.done():
            if time.monotonic() - self._last_refresh <= 1.0:
                return
            self._asked = asyncio.ensure_future(self.refresh())
        await asyncio.shield(self._asked)

    def version(self, model: str) -> str:
        """`model` as the response cache keys it: with the digest of the adapter behind it when it is one, so
        a new version registered under the same name never gets the answers cached for the old one."""
        for replica in self.replicas:
            if model in replica.models and (found := replica.backend.version(model)):
                return f"{model}@{found}"
        return model

    def policy_for(self, model: str) -> RoutingPolicy:
        """The routing policy of a model (the name the replicas serve): its own setting, else the global one."""
        return self._settings.routing_policies.get(model, self._settings.routing_policy)

    def _pick(self, model: str, tried: set[Replica], key: bytes | None, policy: RoutingPolicy) -> Replica:
        serving = [r for r in self.replicas if model in r.models and r.backend.offers(model)]
        healthy = [r for r in serving if r not in tried and r.breaker.available()]
        candidates = [r for r in healthy if not r.full]
        if not candidates:
            if healthy:
                raise ReplicasBusy(f"every replica serving '{model}' is busy", retry_after_s=1)
            waits = [r.breaker.retry_after() for r in serving] or [self._settings.breaker_reset_s]
            raise NoHealthyBackend(f"no healthy backend for model '{model}'", retry_after_s=min(waits))
        if policy == "prefix_affinity" and key is not None:
            usable = set(candidates)
            chosen = pick_bounded(
                key,
                serving,
                usable.__contains__,
                self._settings.affinity_load_factor,
                self._placements,
                self._settings.affinity_move_factor,
            )
            if chosen is not None:
                return chosen  # type: ignore[return-value]  # one of `serving`
        # least in flight; ties broken by rotation so idle replicas share the load
        start = next(self._rotation) % len(candidates)
        rotated = candidates[start:] + candidates[:start]
        return min(rotated, key=lambda r: r.in_flight)

    async def _pick_or_wait(self, model: str, tried: set[Replica], key: bytes | None, policy: RoutingPolicy) -> Replica:
        """`_pick`, waiting for a slot while every replica that could take the request is full."""
        deadline = time.monotonic() + self._settings.queue_timeout_s
        while True:
            try:
                return self._pick(model, tried, key, policy)
            except ReplicasBusy:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                waiting = self._metrics.waiting.labels(model)
                waiting.inc()
                try:
                    await self._slots.wait(left)
                finally:
                    waiting.dec()

    async def open(
        self,
        model: str,
        start: Callable[[Backend], Awaitable[T]],
        *,
        affinity_key: bytes | None = None,
        policy: RoutingPolicy | None = None,
    ) -> tuple[Lease, T]:
        """Run `start` on replicas until one succeeds; fail over only on replica failures.

        `affinity_key` (gateway.replicas.affinity.affinity_key of the request) is used when the policy,
        `policy` or else the model's setting, is `prefix_affinity`; a retry walks on to the next replica."""
        tried: set[Replica] = set()
        policy = policy or self.policy_for(model)
        last: UpstreamError | None = None
        for attempt in range(1, self._settings.max_attempts + 1):
            try:
                replica = await self._pick_or_wait(model, tried, affinity_key, policy)
            except NoHealthyBackend:
                if last is not None:
                    raise last from None
                raise
            tried.add(replica)
            if not replica.breaker.acquire():
                continue
            replica.in_flight += 1
            gauge = self._metrics.in_flight.labels(model, replica.name)
            gauge.inc()
            lease = Lease(replica=replica, in_flight_gauge=gauge)
            try:
                result = await start(replica.backend)
            except UpstreamError as exc:
                lease.done(failed=exc.counts_as_failure, cancelled=not exc.counts_as_failure)
                if isinstance(exc, BackendUnavailable):
                    self._poke_dns(replica)
                last = exc
                self._metrics.retries.labels(model).inc()
                log.info("replica %s failed (%s), trying another", replica.name, exc.message)
                continue
            except BackendClientError:
                lease.done()  # the replica answered properly; the request was at fault
                raise
            except BaseException:
                lease.done(cancelled=True)
                raise
            if attempt > 1:
                self._metrics.failovers.labels(model).inc()
            return lease, result
        assert last is not None
        raise last
