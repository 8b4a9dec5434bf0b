"""The two HTTP metrics the dashboards and alerts use, as prometheus-fastapi-instrumentator defines them.

`http_requests_total{handler,method,status}` and `http_request_duration_seconds{handler,method,status}`
with the library's names, help texts, labels, status groups ("2xx") and buckets (its defaults:
prometheus_client's), fed by the gateway's single front layer (gateway/front.py) rather than the
instrumentator's middleware, and kept in gateway/fast_metrics.py's classes: the library's own path
builds an `Info` object and resolves both series through prometheus_client on every request, more
work than the rest of the gateway's metrics together. tests/gateway/test_fast_metrics.py checks the
exposition against the library's own functions fed the same requests.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client import Histogram as LibraryHistogram

from gateway.fast_metrics import Counter, Histogram

# Probes and scrapes would dominate the request rate and say nothing about the API.
EXCLUDED_HANDLERS = frozenset({"/metrics", "/healthz", "/readyz"})
LABELS = ("handler", "method", "status")


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("http_requests_total", "Total number of requests by method, status and handler.",
                                LABELS, registry=registry)
        self.duration = Histogram("http_request_duration_seconds", "Duration of HTTP requests in seconds",
                                  LABELS, registry=registry, buckets=LibraryHistogram.DEFAULT_BUCKETS)

    def observe(self, *, handler: str, method: str, status: int, duration_s: float) -> None:
        """`handler` is the route template ("none" for a path no route matched), as the instrumentator names it."""
        if handler in EXCLUDED_HANDLERS:
            return
        group = f"{status // 100}xx"
        self.requests.labels(handler, method, group).inc()
        self.duration.labels(handler, method, group).observe(duration_s)
