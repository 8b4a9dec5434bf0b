"""Soak verdicts follow the data; bad command lines get a usage error, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.soak import summarize

MIB = 2**20


def _result(statuses: dict[str, list[int]]) -> dict:
    kinds = [k for k, ss in statuses.items() for _ in ss]
    flat = [s for ss in statuses.values() for s in ss]
    return {"kind": kinds, "status": flat, "latency": [0.001] * len(flat), "wall_s": 1.0, "errors": {}}


def test_growth_is_measured_from_the_end_of_warmup() -> None:
    samples = [(0, 0.0, 50 * MIB), (1000, 1.0, 100 * MIB), (2000, 2.0, 104 * MIB), (10000, 9.0, 110 * MIB)]
    s = summarize(_result({"plain": [200] * 4}), samples, warmup_share=0.1)
    assert s["rss_after_warmup_mib"] == 100 and s["rss_growth_pct"] == pytest.approx(10.0)


def test_only_unexpected_statuses_count_as_failures() -> None:
    result = _result({"plain": [200, 200, 503], "backend_error": [502, 502], "client_error": [404, 200]})
    samples = [(0, 0.0, MIB), (10, 1.0, MIB)]
    s = summarize(result, samples, warmup_share=0.1)
    assert s["unexpected_failures"] == 2  # the plain 503 and the client error answered 200


@pytest.mark.parametrize(
    "module,args",
    [
        ("bench", ["--clients", "one"]),
        ("bench", ["--scenarios", "nope"]),
        ("bench", ["--workers", "0"]),
        ("bench.soak", ["--requests", "5"]),
        ("bench.overhead", ["--requests", "0"]),
        ("bench.overhead", ["--blocks", "0"]),
        ("bench.overhead", ["--requests", "3", "--blocks", "5"]),
        ("bench.workers", ["--workers", "1"]),
        ("bench.workers", ["--workers", "2,x"]),
        ("bench.workers", ["--requests", "0"]),
    ],
)
def test_bad_arguments_are_usage_errors(module: str, args: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "usage:" in out.stderr and "Traceback" not in out.stderr
