"""Read one sample out of a Prometheus text exposition."""

from __future__ import annotations

from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families


class _Getter(Protocol):  # Starlette's TestClient, for an app served in-process
    def get(self, url: str) -> httpx.Response: ...


def sample_in(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def sample(base_url: str, name: str, **labels: str) -> float | None:
    return sample_in(httpx.get(base_url + "/metrics", timeout=5).text, name, **labels)


def metric_value(client: _Getter, name: str, **labels: str) -> float:
    """The sample from an in-process app's `/metrics`; it must be exported."""
    value = sample_in(client.get("/metrics").text, name, **labels)
    if value is None:
        raise AssertionError(f"{name}{labels} not exported")
    return value
