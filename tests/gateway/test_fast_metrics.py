"""The request path's metrics expose exactly what prometheus_client's own classes would."""

from __future__ import annotations

import re

import prometheus_client as pc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from gateway import fast_metrics as fm

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def build(kind) -> tuple[CollectorRegistry, dict]:  # noqa: ANN001
    registry = CollectorRegistry()
    return registry, {
        "requests": kind.Counter("t_requests", "Requests by outcome.", ("model", "outcome"), registry=registry),
        "latency": kind.Histogram("t_latency_seconds", "Latency.", ("model",), buckets=BUCKETS, registry=registry),
        "in_flight": kind.Gauge("t_in_flight", "In flight.", ("model",), registry=registry),
        "monthly": kind.Gauge("t_monthly_usd", "A setting.", registry=registry),
        "unused": kind.Counter("t_unused", "Never touched.", ("model",), registry=registry),
        "unset": kind.Gauge("t_unset", "No labels, never set: 0 from the start.", registry=registry),
        "uncounted": kind.Counter("t_uncounted", "No labels, never counted.", registry=registry),
    }


def drive(m: dict) -> None:
    m["requests"].labels("a", "success").inc()
    m["requests"].labels("a", "success").inc(2.5)
    m["requests"].labels("b", "timeout").inc()
    for value in (0.0005, 0.001, 0.002, 0.5, 3.0, 0.1):  # on a bound counts in that bucket (le)
        m["latency"].labels("a").observe(value)
    m["in_flight"].labels("a").inc()
    m["in_flight"].labels("a").inc()
    m["in_flight"].labels("a").dec()
    m["monthly"].set(1200)


def without_created(text: bytes) -> str:
    return re.sub(r"(?m)^.*_created.*\n", "", text.decode())


@pytest.mark.parametrize("render", [generate_latest, generate_openmetrics])
def test_exposition_is_the_same_as_prometheus_clients(render) -> None:  # noqa: ANN001
    (theirs, m1), (ours, m2) = build(pc), build(fm)
    drive(m1)
    drive(m2)
    assert without_created(render(ours)) == without_created(render(theirs))
    assert "t_latency_seconds_bucket{le=\"0.001\",model=\"a\"} 2.0" in render(ours).decode()
    assert re.search(r'(?m)^t_requests_created\{model="a",outcome="success"\} \d', render(ours).decode())


def test_misuse_fails_as_prometheus_client_does() -> None:
    _, m = build(fm)
    with pytest.raises(ValueError):
        m["requests"].labels("a").inc()  # a label missing
    with pytest.raises(ValueError):
        m["requests"].labels("a", "success").inc(-1)
    with pytest.raises(ValueError):
        m["latency"].observe(1.0)  # a labelled metric needs its labels
    registry = CollectorRegistry()
    fm.Counter("x", "doc", registry=registry)
    with pytest.raises(ValueError):
        fm.Counter("x", "doc", registry=registry)  # a duplicate name is refused, as prometheus_client does


def test_http_metrics_expose_what_the_instrumentators_own_functions_would() -> None:
    from prometheus_fastapi_instrumentator import metrics as library

    from gateway.http_metrics import HttpMetrics

    requests = [("/v1/chat/completions", "POST", 200, 0.021), ("/v1/chat/completions", "POST", 429, 0.0004),
                ("none", "GET", 404, 0.0001), ("/v1/models", "GET", 200, 7.0), ("/healthz", "GET", 200, 0.001)]
    theirs = CollectorRegistry()
    instrumentations = [library.requests(registry=theirs), library.latency(registry=theirs)]
    for handler, method, status, duration in requests:
        if handler == "/healthz":
            continue  # the front layer leaves probes out (EXCLUDED_HANDLERS)
        info = library.Info(request=None, response=None, method=method, modified_handler=handler,  # type: ignore[arg-type]
                            modified_status=f"{str(status)[0]}xx", modified_duration=duration,
                            modified_duration_without_streaming=0.0)
        for instrumentation in instrumentations:
            instrumentation(info)
    ours = CollectorRegistry()
    metrics = HttpMetrics(ours)
    for handler, method, status, duration in requests:
        metrics.observe(handler=handler, method=method, status=status, duration_s=duration)
    assert without_created(generate_latest(ours)) == without_created(generate_latest(theirs))
    assert 'http_requests_total{handler="/v1/chat/completions",method="POST",status="4xx"} 1.0' in \
        generate_latest(ours).decode()
