"""The two HTTP metrics the dashboards and alerts use, defined by prometheus-fastapi-instrumentator.

`http_requests_total{handler,method,status}` and `http_request_duration_seconds{handler,method,status}`
come from the instrumentator's own metric functions, so names, labels and buckets are the library's.
They are fed by the gateway's single front layer (gateway/front.py) rather than the instrumentator's
middleware: that middleware builds a Request and a Response object per request and wraps `send` a
second time, which on the inference path cost more than the observation itself.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import metrics as library

# Probes and scrapes would dominate the request rate and say nothing about the API.
EXCLUDED_HANDLERS = frozenset({"/metrics", "/healthz", "/readyz"})


class HttpMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._instrumentations = [library.requests(registry=registry), library.latency(registry=registry)]

    def observe(self, *, handler: str, method: str, status: int, duration_s: float, first_byte_s: float) -> None:
        """`handler` is the route template ("none" for a path no route matched), as the instrumentator names it."""
        if handler in EXCLUDED_HANDLERS:
            return
        info = library.Info(request=None, response=None, method=method,  # type: ignore[arg-type]
                            modified_handler=handler, modified_status=f"{str(status)[0]}xx",
                            modified_duration=duration_s, modified_duration_without_streaming=first_byte_s)
        for instrumentation in self._instrumentations:
            instrumentation(info)
