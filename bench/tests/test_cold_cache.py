"""bench.cold_cache times the same work after each gap, with the CPU idle and with a busy neighbour."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import cold_cache


def test_the_work_reads_every_object_and_is_deterministic() -> None:
    work = cold_cache.make_work(100)
    assert work() == sum(range(100)) + 40 == cold_cache.make_work(100)()


def test_a_short_run_writes_both_conditions_per_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cold_cache, "RESULTS_ROOT", tmp_path)
    before = os.sched_getaffinity(0)
    cold_cache.main(["--gaps-ms", "0,1", "--repeats", "3", "--objects", "50", "--cpu", str(min(before))])
    assert os.sched_getaffinity(0) == before  # the pin is undone
    (written,) = tmp_path.glob("cold-cache-*.md")
    rows = [line.split("|")[1:-1] for line in written.read_text().splitlines() if line.startswith("| 0 |")
            or line.startswith("| 1 |")]
    assert [r[0].strip() for r in rows] == ["0", "1"]
    assert rows[0][2].strip() == "1.00" and rows[0][4].strip() == "1.00"  # the reference row
    assert all(float(cell) > 0 for r in rows for cell in (r[1], r[3]))
    assert "written:" in capsys.readouterr().out
