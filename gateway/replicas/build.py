"""The replicas, made from the settings: one driver per `GATEWAY_BACKENDS` entry (for the kinds that serve
LoRA adapters, llama.cpp and vLLM, the driver behind its adapter plan), in one pool."""

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
from gateway.replicas.pool import BackendPool
from gateway.settings import Settings
from gateway.state.redis import RedisState


def build_backends(
    settings: Settings,
    *,
    registry: AdapterRegistry,
    leases: AdapterLeases,
    failures: FailureLog,
    tracer: Tracer | None = None,
) -> list[Backend]:
    """`tracer`: a client span for each backend HTTP call (tracing on), else None."""
    held = HeldAdapters()  # what each vLLM replica of this pool holds, shared by their plans
    backends: list[Backend] = []
    for spec in settings.backends:
        driver = DRIVERS[spec.kind](spec, settings)
        if tracer is not None:
            driver.trace_with(tracer)
        backend: Backend = driver
        if isinstance(driver, LlamaCppBackend):
            backend = AdapterServing(driver, LlamaCppAdapters(driver, registry=registry))
        elif isinstance(driver, VllmBackend):
            backend = AdapterServing(
                driver, VllmAdapters(driver, registry=registry, leases=leases, held=held, failures=failures)
            )
        backends.append(backend)
    return backends


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
    backends = build_backends(settings, registry=registry, leases=leases, failures=failures, tracer=tracer)
    return BackendPool(settings, metrics, backends, failures=failures)
