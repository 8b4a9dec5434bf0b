"""Counters, gauges and histograms for the request path, exposed exactly as prometheus_client's own.

Why not prometheus_client's classes: there one `inc()` is four Python calls and a lock, one
`observe()` six, and a proxied request updates about fifteen series: an eighth of all the Python
calls a plain request makes (`python -m bench.critical_path --mode calls`). Here a labelled child is
a plain object whose update is one method call on plain numbers, and the metric families are built
only when Prometheus scrapes. Same names, labels, buckets, `_total` / `_created` samples and text
(tests/gateway/test_fast_metrics.py compares the two expositions). Updates come from the event loop
thread; a scrape may run in a worker thread and reads a snapshot of the children.
"""

from __future__ import annotations

import functools
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from prometheus_client.utils import INF, floatToGoString

LABEL_CACHE_SIZE = 4096


class _CounterChild:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.value += amount


class _GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = float(value)


class _HistogramChild:
    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds  # ends with +Inf, so every value has a bucket
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.sum += amount
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount: `le` semantics


class _Family(Collector):
    """One metric name with its labelled children; registers itself on `registry`."""

    labels: Callable[..., object]  # the child series for these label values, created on first use

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        # The request path resolves a series per update: a C-level cache in front of the lookup makes
        # that no Python call at all. Bounded, as the labels are (configuration and discovery).
        self.labels = functools.lru_cache(maxsize=LABEL_CACHE_SIZE)(self._labels)  # type: ignore[assignment]
        if not self.labelnames:  # as prometheus_client: a metric without labels has its one series from the start
            self.labels()
        if registry is not None:
            registry.register(self)

    def _labels(self, *values: object) -> object:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _only(self) -> object:
        """The one series of a metric without labels."""
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self.labels()

    def _series(self) -> list[tuple[list[str], object]]:
        return [(list(key), child) for key, child in list(self._children.items())]  # a snapshot: see above

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for labels, child in self._series():
            self._add(family, labels, child)
        return [family]

    def _new_child(self) -> object:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def _add(self, family: Metric, labels: list[str], child: object) -> None:
        raise NotImplementedError


class Counter(_Family):
    labels: Callable[..., _CounterChild]  # type: ignore[assignment]

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)  # type: ignore[attr-defined]

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, labels: list[str], child: object) -> None:
        assert isinstance(child, _CounterChild)
        family.add_metric(labels, child.value, created=child.created)  # type: ignore[attr-defined]


class Gauge(_Family):
    labels: Callable[..., _GaugeChild]  # type: ignore[assignment]

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self._only().set(value)  # type: ignore[attr-defined]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, labels: list[str], child: object) -> None:
        assert isinstance(child, _GaugeChild)
        family.add_metric(labels, child.value)  # type: ignore[attr-defined]


class Histogram(_Family):
    labels: Callable[..., _HistogramChild]  # type: ignore[assignment]

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 registry: CollectorRegistry | None = None, *, buckets: Sequence[float]) -> None:
        bounds = tuple(float(b) for b in buckets)
        if list(bounds) != sorted(bounds):
            raise ValueError("buckets must be in increasing order")
        self.bounds = bounds if bounds and bounds[-1] == INF else (*bounds, INF)
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, amount: float) -> None:
        self._only().observe(amount)  # type: ignore[attr-defined]

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Metric, labels: list[str], child: object) -> None:
        assert isinstance(child, _HistogramChild)
        counts, running, buckets = list(child.counts), 0, []
        for bound, count in zip(child.bounds, counts):
            running += count
            buckets.append((floatToGoString(bound), running))
        family.add_metric(labels, buckets, child.sum)  # type: ignore[attr-defined]
        # HistogramMetricFamily takes no `created`; prometheus_client's Histogram emits it last.
        family.samples.append(Sample(self.name + "_created", dict(zip(self.labelnames, labels)), child.created))
