"""Failures the gateway caught and carried on from: each is logged once, with its context, and counted in
`gateway_internal_errors_total{component}`. Nothing is swallowed without both."""

from __future__ import annotations

import logging

from gateway.observability.metrics import GatewayMetrics

log = logging.getLogger("gateway.failures")


class FailureLog:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self.counter = metrics.internal_errors

    def record(self, component: str, exc: BaseException, *, traceback: bool = False, **context: object) -> None:
        """`component`: who caught it (a short, fixed name: the metric's label). `traceback`: for an
        exception nobody expected (a bug), not for a database or a backend being away."""
        self.counter.labels(component).inc()
        line = {
            "event": "internal_error",
            "component": component,
            "error": f"{type(exc).__name__}: {exc}"[:300],
            **context,
        }
        if traceback:
            log.error(line, exc_info=exc)
        else:
            log.warning(line)
