"""`python -m gateway judge` with a real judge: SmolLM2 served by llama.cpp, reached through the gateway as
the route `judge`. The scores' quality is not the point (a 135M model is no judge); the run is: every
sampled answer ends scored or skipped with a counted reason, the scores are stored as `judge` feedback,
and per-variant means are printed. Run with -s to see what the small model made of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from testkit.llama import SMOLLM2_ALIAS
from testkit.processes import REPO_ROOT, Service
from tests.store.support import ADMIN, feedback_rows
from tests.store.test_judge import seed
from tests.support.gateway import ADMIN_KEY, running_gateway

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SAMPLED = 9  # what seed() writes for the route `support`


def test_the_judge_runs_end_to_end_on_the_real_model(llama_server: Service, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    seed(url)
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("A good answer is correct, polite and short. Give 1 for a good answer, 0 for a bad one.")
    with running_gateway([("openai", llama_server.url)], env={"DATABASE_URL": url}) as gateway:
        judge_route = {"variants": [{"model": SMOLLM2_ALIAS, "weight": 100}]}
        assert (
            httpx.put(f"{gateway.url}/admin/routes/judge", json=judge_route, headers=ADMIN, timeout=10).status_code
            == 200
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "judge",
                "--route",
                "support",
                "--sample",
                "50",
                "--since",
                "1d",
                "--rubric",
                str(rubric),
                "--judge-model",
                "judge",
                "--gateway-url",
                gateway.url,
                "--concurrency",
                "2",
                "--max-tokens",
                "80",
                "--json",
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "DATABASE_URL": url, "GATEWAY_API_KEY": ADMIN_KEY},
        )
    print(f"\n{done.stdout}\n{done.stderr}")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    out = json.loads(done.stdout)
    scored = sum(v["n"] for v in out["variants"].values())
    assert out["sampled"] == SAMPLED and scored + sum(out["skipped"].values()) == SAMPLED, out
    assert set(out["skipped"]) <= {"unparseable"}, out  # the gateway answered every call
    assert done.stderr.count("no score in the judge's reply") == out["skipped"].get("unparseable", 0)
    judged = [f for f in feedback_rows(url) if f["kind"] == "judge"]
    assert len(judged) == scored >= 1 and all(0 <= f["value"] <= 1 and f["source"] == "judge" for f in judged)
    variant_of = lambda request_id: "model-b" if request_id == "garbled" else f"model-{request_id[0]}"
    for variant, s in out["variants"].items():
        mine = [f["value"] for f in judged if variant_of(f["request_id"]) == variant]
        assert s["n"] == len(mine) and s["mean"] == pytest.approx(sum(mine) / len(mine))
