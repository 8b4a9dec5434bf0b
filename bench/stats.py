"""Summaries of one load point: percentiles, throughput, CPU per request, stream shape."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default does."""
    data = sorted(v for v in values if not math.isnan(v))
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


@dataclass(kw_only=True)
class PointSummary:
    """What one (scenario, target, concurrency) point measured. Times in milliseconds."""

    scenario: str
    target: str
    concurrency: int
    requests: int
    ok: int
    statuses: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    ttft_p50_ms: float
    ttft_p90_ms: float
    ttft_p99_ms: float
    rps: float
    chunks_min: int
    chunks_max: int
    gap_p50_ms: float
    cpu_s_per_1k: dict[str, float] = field(default_factory=dict)
    loadgen_cpu_s_per_1k: float = 0.0
    transport_errors: dict[str, int] = field(default_factory=dict)
    backend_calls_per_request: float = float("nan")  # < 1 when a cache answered
    # Measured in alternating blocks (bench.point.measure_alternating): each block's p50s, in order.
    block_p50_ms: list[float] = field(default_factory=list)
    block_ttft_p50_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(
    *, scenario: str, target: str, concurrency: int, result: dict[str, Any], cpu: dict[str, float]
) -> PointSummary:
    """Turn a loadgen result file and the servers' CPU deltas into one row."""
    status = result["status"]
    ok_idx = [i for i, s in enumerate(status) if 200 <= s < 300]
    lat = [result["latency"][i] * 1000 for i in ok_idx]
    ttft = [result["ttft"][i] * 1000 for i in ok_idx]
    chunks = [result["chunks"][i] for i in ok_idx]
    gaps = [result["gap"][i] * 1000 for i in ok_idx if result["chunks"][i] > 1]
    n = len(status)
    statuses: dict[str, int] = {}
    for s in status:
        statuses[str(s)] = statuses.get(str(s), 0) + 1
    return PointSummary(
        scenario=scenario,
        target=target,
        concurrency=concurrency,
        requests=n,
        ok=len(ok_idx),
        statuses=statuses,
        p50_ms=percentile(lat, 50),
        p90_ms=percentile(lat, 90),
        p99_ms=percentile(lat, 99),
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p90_ms=percentile(ttft, 90),
        ttft_p99_ms=percentile(ttft, 99),
        rps=n / result["wall_s"] if result["wall_s"] > 0 else float("nan"),
        chunks_min=min(chunks, default=0),
        chunks_max=max(chunks, default=0),
        gap_p50_ms=percentile(gaps, 50),
        cpu_s_per_1k={name: secs * 1000 / n for name, secs in cpu.items()} if n else {},
        loadgen_cpu_s_per_1k=result["cpu_s"] * 1000 / n if n else 0.0,
        transport_errors=dict(result.get("errors", {})),
    )
