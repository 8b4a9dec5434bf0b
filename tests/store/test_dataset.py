"""From the inference log to training rows: `python -m gateway export` and `python -m trainer dataset`
(from the database and from the dump) on SQLite and a real Postgres."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.store.db import migrate
from gateway.store.queries import add_feedback, insert_inferences
from testkit.processes import REPO_ROOT
from tests.store.support import on_db

NOW = datetime.now(UTC)


def inference(
    rid: str, question: str, answer: str, *, hours_ago: float, route: str = "support", outcome: str = "success"
) -> dict[str, Any]:
    return {
        "request_id": rid,
        "created_at": NOW - timedelta(hours=hours_ago),
        "route": route,
        "model": route,
        "variant": "smollm2:135m",
        "key_id": "k1",
        "endpoint": "chat",
        "outcome": outcome,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
        "params": {"max_tokens": 16},
        "answer": answer,
        "cache_hit": False,
    }


# (request id, question, answer, hours ago, feedback [(kind, value, text)])
TRAFFIC = [
    ("r-corrected", "2+2?", "5", 50, [("rating", 0.0, None), ("correction", None, "4")]),
    ("r-up", "capital of France?", "Paris", 40, [("rating", 1.0, None)]),
    ("r-down", "3+3?", "7", 30, [("rating", 0.0, None)]),
    ("r-judged-high", "color of the sky?", "blue", 20, [("judge", 0.9, "fine")]),
    ("r-judged-low", "largest planet?", "Mars", 19, [("judge", 0.2, "wrong")]),
    ("r-silent", "hello?", "hi", 18, []),
    ("r-dup-old", "capital of France?", "Paris.", 10, [("rating", 1.0, None)]),  # same prompt as r-up, newer
    ("r-failed", "boom?", "", 9, [("correction", None, "no boom")]),  # a failed answer, corrected
    ("r-newest", "name a fruit", "apple", 1, [("score", 1.0, None)]),
    ("r-old", "too old", "x", 24 * 40, [("rating", 1.0, None)]),
    ("r-other-route", "other", "y", 2, [("rating", 1.0, None)]),
]


def seed(url: str) -> None:
    async def work(engine: AsyncEngine) -> None:
        await migrate(engine)
        rows = []
        for rid, q, a, hours, _ in TRAFFIC:
            row = inference(
                rid,
                q,
                a,
                hours_ago=hours,
                route="other" if rid == "r-other-route" else "support",
                outcome="backend_error" if rid == "r-failed" else "success",
            )
            rows.append(row)
        await insert_inferences(engine, rows)
        for rid, _, _, hours, notes in TRAFFIC:
            for i, (kind, value, text) in enumerate(notes):
                await add_feedback(
                    engine,
                    request_id=rid,
                    kind=kind,
                    value=value,
                    text=text,
                    key_id="k1",
                    at=NOW - timedelta(hours=hours) + timedelta(minutes=1 + i),
                )

    on_db(url, work)


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dataset_from_the_database_and_from_an_export(database_url: str, tmp_path: Path) -> None:
    seed(database_url)
    out = tmp_path / "db.jsonl"
    run(
        "trainer",
        "dataset",
        "--database-url",
        database_url,
        "--route",
        "support",
        "--since",
        "30d",
        "--out",
        str(out),
        "--heldout",
        "0.25",
    )
    train, held = read(out), read(tmp_path / "db.heldout.jsonl")
    report = json.loads((tmp_path / "db.report.json").read_text())
    by_id = {r["request_id"]: r for r in train + held}
    assert set(by_id) == {"r-corrected", "r-dup-old", "r-judged-high", "r-failed", "r-newest"}
    assert by_id["r-corrected"]["messages"][-1] == {"role": "assistant", "content": "4"}
    assert by_id["r-corrected"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert by_id["r-failed"]["messages"][-1]["content"] == "no boom" and by_id["r-dup-old"]["source"] == "rated_up"
    assert [r["request_id"] for r in held] == ["r-newest"], "the newest share is held out"
    prompts = lambda rows: {json.dumps(r["messages"][:-1]) for r in rows}
    assert not prompts(train) & prompts(held)
    assert report["reasons"] == {
        "correction": 2,
        "rated_up": 2,
        "scored": 2,
        "rated_down": 1,
        "low_score": 1,
        "no_signal": 1,
    }
    assert report["duplicates_dropped"] == 1 and report["train"] == 4 and report["heldout"] == 1

    dump = tmp_path / "dump.jsonl"
    run("gateway", "export", "--out", str(dump), env={"DATABASE_URL": database_url})
    assert len(read(dump)) == len(TRAFFIC)
    again = tmp_path / "file.jsonl"
    run(
        "trainer",
        "dataset",
        "--from-file",
        str(dump),
        "--route",
        "support",
        "--since",
        "30d",
        "--out",
        str(again),
        "--heldout",
        "0.25",
    )
    assert read(again) == train and read(tmp_path / "file.heldout.jsonl") == held


def test_feedback_not_tied_to_the_requests_sender_never_becomes_a_target() -> None:
    from gateway.protocol.training_rows import judge_row

    row = {"answer": "the model's answer", "outcome": "success"}
    planted = {
        "kind": "correction",
        "text": "what another key wanted it to learn",
        "role": "unverified",
        "created_at": "2026-01-02",
        "id": 2,
    }
    own = {"kind": "correction", "text": "the owner's correction", "role": "owner", "created_at": "2026-01-01", "id": 1}
    assert judge_row({**row, "feedback": [own, planted]}, 0.5) == ("correction", "the owner's correction")
    assert judge_row({**row, "feedback": [planted]}, 0.5) == ("no_signal", None)
    down = {"kind": "rating", "value": 0.0, "role": "unverified", "created_at": "2026-01-03", "id": 3}
    up = {"kind": "rating", "value": 1.0, "role": None, "created_at": "2026-01-01", "id": 1}  # before roles existed
    assert judge_row({**row, "feedback": [up, down]}, 0.5) == ("rated_up", "the model's answer")
