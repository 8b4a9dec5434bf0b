"""The workers report compares every worker count with the first and shows each gateway's process count."""

from __future__ import annotations

from bench import workers
from bench.stats import PointSummary


def _point(w: int, rps: float, cpu_ms: float) -> PointSummary:
    return PointSummary(
        scenario="plain",
        target=workers.target_name(w),
        concurrency=50,
        requests=1000,
        ok=998,
        statuses={"200": 998, "503": 2},
        p50_ms=10.0,
        p90_ms=12.0,
        p99_ms=20.0,
        ttft_p50_ms=10.0,
        ttft_p90_ms=12.0,
        ttft_p99_ms=20.0,
        rps=rps,
        chunks_min=0,
        chunks_max=0,
        gap_p50_ms=float("nan"),
        cpu_s_per_1k={"gateway": cpu_ms, "redis": 0.1},
    )


def test_table_gives_each_count_its_ratio_to_the_first() -> None:
    rows = workers.table([_point(2, 2400.0, 0.5), _point(1, 1600.0, 0.45)], [1, 2], {1: 1, 2: 3})
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows[2:]]
    assert cells[0] == ["1", "1", "1600", "1.00x", "10.00", "20.00", "0.450", "2"]
    assert cells[1] == ["2", "3", "2400", "1.50x", "10.00", "20.00", "0.500", "2"]
