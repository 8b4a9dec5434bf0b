"""The load generator counts what the server sent: statuses, chunks, first-token time, gaps."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from bench.loadgen import RequestKind
from bench.point import chat_body, measure_alternating, merge_results, run_loadgen
from bench.stack import Target
from bench.tests.conftest import TOKEN_DELAY_MS, TOKENS
from testkit.processes import Service


def _spec(mock: Service, kinds: list[RequestKind], **extra) -> dict:
    return {
        "host": "127.0.0.1",
        "port": mock.port,
        "concurrency": 4,
        "requests": 40,
        "warmup": 4,
        "kinds": [asdict(k) for k in kinds],
        "watch_pids": {"mock": mock.proc.pid},
        **extra,
    }


def test_mixed_load_is_counted_per_kind(mock: Service, tmp_path: Path) -> None:
    kinds = [
        RequestKind(
            name="plain", path="/v1/chat/completions", body=chat_body("bench-model", stream=False, prompt="a {n}")
        ),
        RequestKind(
            name="sse",
            path="/v1/chat/completions",
            stream=True,
            body=chat_body("bench-model", stream=True, prompt="b {n}"),
        ),
        RequestKind(
            name="ndjson", path="/api/chat", stream=True, body=chat_body("bench-model", stream=True, prompt="c")
        ),
        RequestKind(name="fail", path="/api/chat", body=chat_body("bench-model", stream=False, prompt="BENCH_FAIL")),
    ]
    r = run_loadgen(_spec(mock, kinds), tmp_path, "mixed")
    assert len(r["kind"]) == 40 and r["errors"] == {}
    by = {k: [i for i, x in enumerate(r["kind"]) if x == k] for k in ("plain", "sse", "ndjson", "fail")}
    assert all(len(v) == 10 for v in by.values())  # equal weights: an exact share each
    assert {r["status"][i] for i in by["fail"]} == {500}
    assert {r["status"][i] for i in by["plain"] + by["sse"] + by["ndjson"]} == {200}
    for k in ("sse", "ndjson"):
        for i in by[k]:
            assert r["chunks"][i] == TOKENS
            assert r["ttft"][i] < r["latency"][i]
            # tokens are spaced by the mock's delay; timers only ever fire late, never early
            assert r["gap"][i] >= TOKEN_DELAY_MS / 1000 * 0.9
            assert r["latency"][i] >= TOKENS * TOKEN_DELAY_MS / 1000 * 0.9
    assert all(r["chunks"][i] == 0 for i in by["plain"])
    assert r["server_cpu_s"]["mock"] >= 0 and r["cpu_s"] > 0 and r["wall_s"] > 0


def test_progress_lines_and_unique_bodies(mock: Service, tmp_path: Path) -> None:
    kinds = [
        RequestKind(
            name="plain", path="/v1/chat/completions", body=chat_body("bench-model", stream=False, prompt="{n}")
        )
    ]
    spec = _spec(mock, kinds, progress_every=10)
    spec_path = tmp_path / "s.json"
    spec_path.write_text(json.dumps(spec))
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(spec_path), str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["progress", "10", "progress", "20", "progress", "30", "progress", "40"]


def test_bad_spec_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text('{"host": "127.0.0.1"}')
    out = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(bad), str(tmp_path / "r.json")], capture_output=True, text=True
    )
    assert out.returncode != 0 and "bad load spec" in out.stderr and "Traceback" not in out.stderr


def test_alternating_blocks_add_up_to_one_point_per_target(mock: Service, tmp_path: Path) -> None:
    """`measure_alternating`: each target gets its requests in turns, merged back into one row."""
    ok = Target(name="ok", port=mock.port, processes={"mock": mock})
    failing = Target(name="failing", port=mock.port, processes={"mock": mock})
    kinds = {
        "ok": [
            RequestKind(
                name="plain", path="/v1/chat/completions", body=chat_body("bench-model", stream=False, prompt="a {n}")
            )
        ],
        "failing": [
            RequestKind(
                name="plain", path="/api/chat", body=chat_body("bench-model", stream=False, prompt="BENCH_FAIL")
            )
        ],
    }
    rows = measure_alternating(
        targets=[ok, failing],
        kinds=kinds,
        scenario="plain",
        concurrency=2,
        requests=25,
        blocks=3,
        warmup=2,
        workdir=tmp_path,
        mock_url=mock.url,
    )
    assert [(r.target, r.requests, r.ok, r.statuses) for r in rows] == [
        ("ok", 25, 25, {"200": 25}),
        ("failing", 25, 0, {"500": 25}),
    ]
    # 25 measured + 3 blocks x 20 warm-up (10 per client) reached the mock, for each target
    assert [r.backend_calls_per_request for r in rows] == [1.0, 1.0]
    assert [set(r.cpu_s_per_1k) for r in rows] == [{"mock"}, {"mock"}]  # (too short a run for CPU ticks)
    ok_row = rows[0]  # each block's own p50, and the whole point's p50 lies among them
    assert len(ok_row.block_p50_ms) == 3 and min(ok_row.block_p50_ms) <= ok_row.p50_ms <= max(ok_row.block_p50_ms)


def test_merged_results_concatenate_columns_and_sum_times() -> None:
    parts = [
        {
            "wall_s": 1.0,
            "cpu_s": 0.5,
            "server_cpu_s": {"gw": 0.2},
            "errors": {"timeout": 1},
            "maxrss_kb": 9,
            "latency": [0.1, 0.2],
            "status": [200, 200],
        },
        {
            "wall_s": 2.0,
            "cpu_s": 0.25,
            "server_cpu_s": {"gw": 0.3, "redis": 0.1},
            "errors": {},
            "latency": [0.3],
            "status": [502],
        },
    ]
    assert merge_results(parts) == {
        "wall_s": 3.0,
        "cpu_s": 0.75,
        "server_cpu_s": {"gw": 0.5, "redis": 0.1},
        "errors": {"timeout": 1},
        "latency": [0.1, 0.2, 0.3],
        "status": [200, 200, 502],
    }
