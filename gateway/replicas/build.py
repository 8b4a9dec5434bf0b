"""The replicas, made from the settings: one driver per `GATEWAY_BACKENDS` entry, or per address of a
`discover: dns` entry (for the kinds that serve LoRA adapters, llama.cpp and vLLM, the driver behind its
adapter plan), in one pool."""

from __future__ import annotations

from opentelemetry.trace import Tracer

from gateway.adapters.leases import AdapterLeases
from gateway.adapters.llamacpp import LlamaCppAdapters
from gateway.adapters.registry import AdapterRegistry
from gateway.adapters.serving import AdapterServing
from gateway.adapters.vllm import HeldAdapters, VllmAdapters
from gateway.backends import DRIVERS
from gateway.backends.base import Backend
from gateway.backends.llamacpp import LlamaCppBackend
from gateway.backends.vllm import VllmBackend
from gateway.observability.failures import FailureLog
from gateway.observability.metrics import GatewayMetrics
from gateway.replicas.dns import AddressBook
from gateway.replicas.pool import BackendPool
from gateway.settings import BackendSpec, Settings
from gateway.state.redis import RedisState


class BackendMaker:
    """Makes the driver of one replica from its spec (for the kinds that serve LoRA adapters, llama.cpp and
    vLLM, the driver behind its adapter plan): for the configured replicas at start, and for each address a
    `discover: dns` backend resolves to later."""

    def __init__(
        self,
        settings: Settings,
        *,
        registry: AdapterRegistry,
        leases: AdapterLeases,
        failures: FailureLog,
        tracer: Tracer | None = None,
    ) -> None:
        """`tracer`: a client span for each backend HTTP call (tracing on), else None."""
        self.settings, self.registry, self.leases, self.failures, self.tracer = (
            settings,
            registry,
            leases,
            failures,
            tracer,
        )
        self.held = HeldAdapters()  # what each vLLM replica of this pool holds, shared by their plans

    def __call__(self, spec: BackendSpec) -> Backend:
        driver = DRIVERS[spec.kind](spec, self.settings)
        if self.tracer is not None:
            driver.trace_with(self.tracer)
        if isinstance(driver, LlamaCppBackend):
            return AdapterServing(driver, LlamaCppAdapters(driver, registry=self.registry))
        if isinstance(driver, VllmBackend):
            plan = VllmAdapters(
                driver, registry=self.registry, leases=self.leases, held=self.held, failures=self.failures
            )
            return AdapterServing(driver, plan)
        return driver


def build_pool(
    settings: Settings,
    metrics: GatewayMetrics,
    *,
    failures: FailureLog | None = None,
    registry: AdapterRegistry | None = None,
    leases: AdapterLeases | None = None,
    tracer: Tracer | None = None,
) -> BackendPool:
    """The pool of every configured replica. Without a `registry` and `leases` adapters live in this process."""
    failures = failures or FailureLog(metrics)
    registry = registry or AdapterRegistry.for_redis(RedisState(None))
    leases = leases or AdapterLeases(RedisState(None), lease_s=settings.total_timeout_s + 60)
    maker = BackendMaker(settings, registry=registry, leases=leases, failures=failures, tracer=tracer)
    addresses = AddressBook(settings.dns_servers, timeout_s=settings.discovery_timeout_s)
    return BackendPool(settings, metrics, maker, failures=failures, addresses=addresses)
