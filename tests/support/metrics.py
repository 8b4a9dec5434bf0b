"""Read one sample out of a Prometheus text exposition."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sample(base_url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(base_url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None
