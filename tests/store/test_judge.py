"""`python -m gateway judge` against a deterministic judge server reached through a real gateway: scores
kept as feedback, per-variant means with intervals, judge runs, and the gateway's gauges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.jobs.judge import mean_ci, parse_score
from gateway.store.db import migrate
from gateway.store.queries import insert_inferences
from testkit.processes import REPO_ROOT, Service, free_port, python_service, wait_until
from tests.store.support import ADMIN_KEY, feedback_rows, on_db
from tests.support.gateway import running_gateway
from tests.support.metrics import sample


@pytest.fixture(scope="module")
def judge_server() -> Iterator[Service]:
    port = free_port()
    service = python_service("judge", ["-m", "tests.support.judge_server", "--port", str(port)], port)
    service.start().wait_port()
    yield service
    service.stop()


def seed(url: str) -> None:
    """Variant A answers well (good, good, fair, good), B badly (bad, fair, bad, bad) plus one answer the judge
    cannot score; one row of another route."""
    now = datetime.now(UTC)
    answers = {"a": ["good", "good", "fair", "good"], "b": ["bad", "fair", "bad", "bad"]}
    rows = [
        {
            "request_id": f"{v}{i}",
            "created_at": now - timedelta(hours=1),
            "route": "support",
            "model": "support",
            "variant": f"model-{v}",
            "endpoint": "chat",
            "outcome": "success",
            "cache_hit": False,
            "messages": [{"role": "user", "content": f"q{i}"}],
            "answer": f"a {word} answer",
        }
        for v, words in answers.items()
        for i, word in enumerate(words)
    ]
    rows.append({**rows[0], "request_id": "elsewhere", "route": "other", "model": "other"})
    rows.append(
        {
            **rows[-1],
            "request_id": "garbled",
            "route": "support",
            "model": "support",
            "variant": "model-b",
            "answer": "a garbled answer",
        }
    )  # the judge's reply to it holds no score

    async def work(engine: AsyncEngine) -> None:
        await migrate(engine)
        await insert_inferences(engine, rows)

    on_db(url, work)


def judge(database_url: str, gateway: Service, rubric: Path, *extra: str) -> dict:
    key_file = rubric.parent / "api_key"  # the key as a file (GATEWAY_API_KEY_FILE), the way a secret comes
    key_file.write_text(ADMIN_KEY + "\n")
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
            "7d",
            "--rubric",
            str(rubric),
            "--judge-model",
            "judge-1",
            "--gateway-url",
            gateway.url,
            "--json",
            *extra,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DATABASE_URL": database_url, "GATEWAY_API_KEY_FILE": str(key_file)},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_judge_scores_a_sample_through_the_gateway(database_url: str, judge_server: Service, tmp_path: Path) -> None:
    seed(database_url)
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("A good answer is correct and short.")
    with running_gateway(
        [("openai", judge_server.url)],
        env={"DATABASE_URL": database_url, "GATEWAY_CAPTURE_RETENTION_INTERVAL_S": "0.5"},
    ) as gateway:
        output = judge(database_url, gateway, rubric)
        assert output["sampled"] == 9 and output["skipped"] == {"unparseable": 1}
        result = output["variants"]
        assert result["model-a"]["n"] == 4 and result["model-a"]["mean"] == pytest.approx(0.875)
        assert result["model-b"]["mean"] == pytest.approx(0.125)
        assert result["model-a"]["ci_low"] < 0.875 < result["model-a"]["ci_high"]
        wait_until(
            lambda: sample(gateway.url, "gateway_judge_score", route="support", variant="model-b") == 0.125,
            timeout=10,
            what="the judge gauge",
        )
        assert sample(gateway.url, "gateway_judge_baseline_score", route="support", variant="model-b") == 0.125
    judged = [f for f in feedback_rows(database_url) if f["kind"] == "judge"]
    assert {f["request_id"] for f in judged} == {f"{v}{i}" for v in "ab" for i in range(4)}
    assert all(f["source"] == "judge-1" for f in judged)
    assert {f["value"] for f in judged if f["request_id"] == "a2"} == {0.5}


def test_score_parsing_and_intervals() -> None:
    assert parse_score('{"score": 0.7, "reason": "ok"}') == (0.7, "ok")
    assert parse_score("Score: 1.4 because") == (1.0, "")
    assert parse_score("no number") is None
    assert parse_score('{"Score": "0.25", "reason": "meh"}') == (0.25, "meh")
    assert parse_score("0.6") == (0.6, "") and parse_score("-3") == (0.0, "")
    assert parse_score('{"score": true}') is None and parse_score('{"score": null, "x": 1}') is None
    assert parse_score('{"verdict": "fine"}') is None and parse_score("[1, 2]") is None
    assert parse_score('{"score": "NaN"}') is None
    mean, low, high = mean_ci([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and 0 <= low < 0.5 < high <= 1
    assert mean_ci([0.3]) == (0.3, 0.0, 1.0)
