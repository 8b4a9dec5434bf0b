"""Percentiles agree with numpy; the target checks pass and miss where the numbers say so."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bench import overhead, report
from bench.stats import PointSummary, percentile


def test_percentile_matches_numpy() -> None:
    rng = random.Random(3)
    for n in (1, 2, 7, 100, 1001):
        data = [rng.expovariate(1.0) for _ in range(n)]
        for q in (0, 50, 90, 99, 100):
            assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))
    assert percentile([float("nan"), 1.0, 3.0], 50) == 2.0


def _point(scenario: str, target: str, c: int, lat: float, *, cpu: float, rps: float = 100.0) -> PointSummary:
    return PointSummary(
        scenario=scenario,
        target=target,
        concurrency=c,
        requests=100,
        ok=100,
        statuses={"200": 100},
        p50_ms=lat,
        p90_ms=lat,
        p99_ms=lat * 2,
        ttft_p50_ms=lat,
        ttft_p90_ms=lat,
        ttft_p99_ms=lat * 2,
        rps=rps,
        chunks_min=0,
        chunks_max=0,
        gap_p50_ms=float("nan"),
        cpu_s_per_1k={target if target != "direct" else "mock": cpu},
    )


def _run(gateway_added: float, gateway_cpu: float) -> list[PointSummary]:
    points = []
    for scenario in ("plain", "stream"):
        for c in (1, 50):
            points += [
                _point(scenario, "direct", c, 1.0, cpu=0.05),
                _point(scenario, "gateway", c, 1.0 + gateway_added, cpu=gateway_cpu, rps=2000),
                _point(scenario, "litellm", c, 1.0 + 20.0, cpu=15.0),
            ]
    return points


RSS = {"gateway": {"gateway": 60 * 2**20}, "litellm": {"litellm": 400 * 2**20}}


def test_checks_pass_when_the_gateway_is_far_ahead() -> None:
    checks = report.target_checks(_run(gateway_added=0.5, gateway_cpu=0.4), RSS)
    assert checks and all(ok for _, _, ok in checks), [c for c in checks if not c[2]]


def test_checks_miss_when_the_gateway_is_close_to_litellm() -> None:
    checks = dict((what, ok) for what, _, ok in report.target_checks(_run(gateway_added=5.0, gateway_cpu=3.0), RSS))
    assert checks["added plain p50 at 1 client: LiteLLM / gateway >= 10"] is False
    assert checks["gateway added p50 at 1 client <= 1 ms"] is False
    assert checks["CPU per plain request: LiteLLM / gateway >= 10"] is False
    assert checks["peak RSS: LiteLLM / gateway >= 3"] is True


def test_markdown_and_plot_are_written(tmp_path: Path) -> None:
    points = _run(gateway_added=0.5, gateway_cpu=0.4)
    text = report.markdown(
        title="t",
        machine={"cpu": "x"},
        settings={},
        points=points,
        rss=RSS,
        scenarios={"plain": "p", "stream": "s"},
        checks=report.target_checks(points, RSS),
        notes=[],
    )
    assert "| gateway | 50 | 1.50 |" in text and "PASS" in text and "MISS" not in text
    report.plot(points, tmp_path / "plot.png", "t")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overhead_checks_show_the_spread_of_alternating_blocks() -> None:
    points = _run(gateway_added=0.9, gateway_cpu=0.4)
    idx = report.index(points)
    idx[("plain", "direct", 1)].block_p50_ms = [20.5, 20.7, 20.6]
    idx[("plain", "gateway", 1)].block_p50_ms = [21.3, 21.8, 21.5]
    checks = {what: (measured, ok) for what, measured, ok in overhead.checks(points)}
    assert checks["added latency p50 at 1 client, backend answering in 20 ms <= 1 ms"] == (
        "0.900 ms (blocks: 0.800 to 1.100)",
        True,
    )
    # points measured in one run each (50 clients, and TTFT here) show no spread
    assert checks["added TTFT p50 at 1 client, backend answering in 20 ms <= 1 ms"] == ("0.900 ms", True)
    assert checks["added latency p99 at 50 clients, backend answering in 20 ms <= 15 ms"][0] == "1.800 ms"


def test_overhead_checks_the_1_client_target_against_both_backends_and_each_on_its_own() -> None:
    points = _run(gateway_added=1.2, gateway_cpu=0.4)  # behind the 20 ms backend: over the line
    for scenario in ("plain", "stream"):  # against the backend answering at once: under it
        points += [
            _point(scenario + overhead.INSTANT, "direct", 1, 0.3, cpu=0.05),
            _point(scenario + overhead.INSTANT, "gateway", 1, 0.3 + 0.6, cpu=0.4),
        ]
    checks = {what: ok for what, _, ok in overhead.checks(points, backend_ms=20)}
    assert checks["added latency p50 at 1 client, backend answering at once <= 1 ms"] is True
    assert checks["added TTFT p50 at 1 client, backend answering at once <= 1 ms"] is True
    assert checks["added latency p50 at 1 client, backend answering in 20 ms <= 1 ms"] is False
    assert checks["added TTFT p50 at 1 client, backend answering in 20 ms <= 1 ms"] is False
    assert len(checks) == 8  # 2 x (instant 1 client, 20 ms 1 client, 50 clients p50 and p99)


def test_headline_table_reads_the_run_at_its_lowest_and_highest_concurrency() -> None:
    rows = report.headline(_run(gateway_added=0.5, gateway_cpu=0.4))
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows[2:]]
    by_label = {row[0]: row[1:] for row in cells}
    assert rows[0].startswith("| 1 / 50 clients |")
    # direct shows its own p50 (the floor); gateway and LiteLLM what they add to it, and the ratio
    assert by_label["added latency p50, plain (ms)"] == ["1.00 / 1.00", "0.50 / 0.50", "20.00 / 20.00", "40.0x / 40.0x"]
    assert by_label["added latency p99, plain (ms)"][1:] == ["1.00 / 1.00", "40.00 / 40.00", "40.0x / 40.0x"]
    assert by_label["CPU per plain request, main process (ms)"] == [
        "0.05 / 0.05",
        "0.40 / 0.40",
        "15.00 / 15.00",
        "37.5x / 37.5x",
    ]
    assert by_label["plain requests/s the gateway serves per core (1000 / CPU ms at 1 clients)"][1] == "2500"


def test_headline_table_says_n_a_where_litellm_was_not_measured() -> None:
    points = [p for p in _run(gateway_added=0.5, gateway_cpu=0.4) if p.target != "litellm"]
    row = next(r for r in report.headline(points) if r.startswith("| added latency p50, plain"))
    assert "n/a / n/a" in row and "0.50 / 0.50" in row
