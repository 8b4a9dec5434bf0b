"""Replicas, model discovery, and picking a replica among closed circuits: by a routing policy,
least requests in flight (the default) or prefix affinity (gateway/replicas/affinity.py).

`open()` is the failover loop: it tries replicas one after another until one *starts* answering
(for a stream: yields its first chunk). Once that happened the caller owns the `Lease` and no
retry is possible any more: bytes may already be on their way to the client.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import Gauge

from gateway.backends.base import Backend
from gateway.background import cancel_and_wait, every
from gateway.errors import BackendClientError, ModelNotFound, NoHealthyBackend, UpstreamError
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.replicas.affinity import Placements, pick_bounded
from gateway.replicas.breaker import CircuitBreaker, CircuitState
from gateway.settings import RoutingPolicy, Settings

log = logging.getLogger("gateway.pool")
T = TypeVar("T")


def _show_state(gauge: Gauge) -> Callable[[CircuitState], None]:
    """A breaker's state changes shown on its replica's gateway_circuit_state series."""
    return lambda state: gauge.set(int(state))


@dataclass(eq=False)
class Replica:
    backend: Backend
    breaker: CircuitBreaker
    models: frozenset[str] = frozenset()
    up: bool = False
    in_flight: int = 0
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = self.backend.name


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
        breaker = self.replica.breaker
        if cancelled:
            breaker.release_probe()
        elif failed:
            breaker.record_failure()
        else:
            breaker.record_success()


class BackendPool:
    def __init__(
        self, settings: Settings, metrics: GatewayMetrics, backends: list[Backend], *, failures: FailureLog
    ) -> None:
        """`backends`: one per replica (gateway/replicas/build.py makes them from the settings)."""
        self._settings = settings
        self._metrics = metrics
        self._failures = failures
        self.replicas: list[Replica] = []
        for backend in backends:
            metrics.register_backend(backend.name)
            breaker = CircuitBreaker(
                failure_threshold=settings.breaker_failures,
                reset_after_s=settings.breaker_reset_s,
                on_change=_show_state(metrics.circuit_state.labels(backend.name)),
            )
            self.replicas.append(Replica(backend=backend, breaker=breaker))
        self._aliases = dict(settings.model_aliases)
        self._rotation = itertools.count()
        self._placements = Placements(settings.affinity_memory)  # prefix_affinity: where each recent key went
        self._last_refresh = 0.0
        self._refresh_lock = asyncio.Lock()
        self._asked: asyncio.Future[None] | None = None  # the refresh an unknown model's requests wait for
        self._task: asyncio.Task[None] | None = None

    # -- discovery -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        self._task = every(
            self._settings.discovery_interval_s, self.refresh, name="model_discovery", failures=self._failures
        )

    async def aclose(self) -> None:
        await cancel_and_wait([self._task])
        await asyncio.gather(*(r.backend.aclose() for r in self.replicas), return_exceptions=True)

    async def refresh(self) -> None:
        """Ask every replica what it serves. A replica that fails keeps its last list (so a dead
        replica's models still route - and fail over or answer 503 - rather than turn into 404s)."""
        async with self._refresh_lock:
            await asyncio.gather(*(self._refresh_one(r) for r in self.replicas))
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
        self._metrics.backend_up.labels(replica.name).set(1 if replica.up else 0)

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
        candidates = [r for r in serving if r not in tried and r.breaker.available()]
        if not candidates:
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
                replica = self._pick(model, tried, affinity_key, policy)
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
