"""Capture and feedback through real gateway processes in front of the Ollama double, on SQLite and a
real Postgres: what a captured row holds, the switches (off by default, global, per route, per key),
feedback kinds joined on another replica, erasure by key, retention, and prompts kept out of logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from testkit.processes import REPO_ROOT, Service, wait_until
from tests.store import support
from tests.store.support import ADMIN, MODEL, chat, create_key, feedback_rows, inference_rows
from tests.support.metrics import sample


@pytest.fixture
def gateway_on(redis: Service):
    def start(double: Service, database_url: str, **env: str) -> Service:
        return support.gateway_on(double, database_url, REDIS_URL=f"redis://127.0.0.1:{redis.port}/0", **env)

    return start


def rows_when(url: str, count: int) -> list[dict[str, Any]]:
    wait_until(lambda: len(inference_rows(url)) >= count, timeout=15, what=f"{count} captured row(s)")
    return inference_rows(url)


def stream_text(response: httpx.Response) -> str:
    parts = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or []:
                parts.append((choice.get("delta") or {}).get("content") or "")
    return "".join(parts)


def test_a_captured_answer_holds_what_the_trainer_and_judge_need(
    double: Service, database_url: str, gateway_on
) -> None:
    gateway = gateway_on(double, database_url, GATEWAY_CAPTURE_PERCENT="100")
    try:
        key, key_id = create_key(gateway)
        unary = chat(gateway, key, "capture me please", temperature=0.3, response_format={"type": "json_object"})
        streamed = chat(gateway, key, "and me as a stream", stream=True)
        rows = {r["request_id"]: r for r in rows_when(database_url, 2)}
    finally:
        gateway.stop()
    first = rows[unary.headers["x-request-id"]]
    assert first["messages"] == [{"role": "user", "content": "capture me please"}]
    assert first["params"]["temperature"] == 0.3 and first["params"]["max_tokens"] == 8
    assert first["answer"] == unary.json()["choices"][0]["message"]["content"]
    assert first["finish_reason"] == unary.json()["choices"][0]["finish_reason"]
    assert first["completion_tokens"] == unary.json()["usage"]["completion_tokens"]
    assert first["key_id"] == key_id and key not in json.dumps([str(v) for v in first.values()])
    assert first["variant"] == MODEL and first["route"] is None and first["outcome"] == "success"
    assert first["format_valid"] is not None and first["latency_s"] > 0 and first["cache_hit"] is False
    second = rows[streamed.headers["x-request-id"]]
    assert second["answer"] == stream_text(streamed) and second["ttft_s"] is not None


def test_capture_is_off_by_default_and_on_per_route_and_per_key(double: Service, database_url: str, gateway_on) -> None:
    gateway = gateway_on(double, database_url)
    try:
        key, key_id = create_key(gateway)
        other_key, other_id = create_key(gateway, "watched")
        chat(gateway, key, "not captured")
        route = {"variants": [{"model": MODEL, "weight": 100}], "capture": {"percent": 100}}
        assert httpx.put(f"{gateway.url}/admin/routes/support", json=route, headers=ADMIN).status_code == 200
        routed = chat(gateway, key, "routed, so captured", model="support")
        rows = rows_when(database_url, 1)
        assert [r["request_id"] for r in rows] == [routed.headers["x-request-id"]]
        assert rows[0]["route"] == "support" and rows[0]["model"] == "support" and rows[0]["variant"] == MODEL
        assert rows[0]["route_version"] is not None
    finally:
        gateway.stop()
    keyed = gateway_on(double, database_url, GATEWAY_CAPTURE_KEYS=json.dumps({other_id: 100}))
    try:
        chat(keyed, key, "this key is not watched")
        watched = chat(keyed, other_key, "this key is")
        rows = rows_when(database_url, 2)
        assert rows[-1]["request_id"] == watched.headers["x-request-id"] and len(rows) == 2
    finally:
        keyed.stop()


def test_a_key_record_carries_its_own_capture_share(
    double: Service, database_url: str, gateway_on, redis: Service
) -> None:
    gateway = gateway_on(double, database_url)
    try:
        made = subprocess.run(
            [sys.executable, "-m", "gateway", "--json", "keys", "create", "--name", "watched", "--capture", "100"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"},
        )
        assert made.returncode == 0, made.stderr
        watched = json.loads(made.stdout)
        assert watched["capture_percent"] == 100
        plain_key, plain_id = create_key(gateway, "plain")
        chat(gateway, plain_key, "a plain key is not captured")
        captured = chat(gateway, watched["key"], "a watched key is")
        rows = rows_when(database_url, 1)
        assert [(r["request_id"], r["key_id"]) for r in rows] == [(captured.headers["x-request-id"], watched["id"])]
        patched = httpx.patch(f"{gateway.url}/admin/keys/{plain_id}", json={"capture_percent": 100}, headers=ADMIN)
        assert patched.status_code == 200 and patched.json()["capture_percent"] == 100
        later = chat(gateway, plain_key, "now this key is watched too")
        assert rows_when(database_url, 2)[-1]["request_id"] == later.headers["x-request-id"]
        for bad in ({"name": "x", "capture_percent": 150}, {"name": "x", "capture_percent": "all"}):
            refused = httpx.post(f"{gateway.url}/admin/keys", json=bad, headers=ADMIN)
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "capture_percent", refused.text
    finally:
        gateway.stop()
    wrong = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", "create", "--name", "w", "--capture", "101"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis.port}/0"},
    )
    assert wrong.returncode != 0 and "capture_percent must be a number from 0 to 100" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def vote(gateway: Service, key: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def test_feedback_kinds_join_on_another_replica_and_unknown_requests_are_kept(
    double: Service, database_url: str, gateway_on
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("two replicas share a database only on Postgres")
    a = gateway_on(double, database_url, GATEWAY_CAPTURE_PERCENT="100")
    b = gateway_on(double, database_url)
    try:
        key, key_id = create_key(a)
        answer = chat(a, key, "what is 2+2")
        request_id = answer.headers["x-request-id"]
        rows_when(database_url, 1)
        joined = vote(b, key, request_id=request_id, rating="down", correction="4")
        assert joined.status_code == 201, joined.text
        assert joined.json()["model"] == MODEL and joined.json()["joined"] is True
        assert vote(b, key, request_id=request_id, kind="score", score=0.25).status_code == 201
        assert vote(b, key, request_id=request_id, comment="wrong sum").json()["kinds"] == ["comment"]
        unknown = vote(b, key, request_id="never-captured-1", rating="up")
        assert unknown.status_code == 202 and unknown.json()["stored"] is True
        for bad in (
            {"request_id": request_id, "score": 1.5},
            {"request_id": request_id},
            {"request_id": request_id, "kind": "correction", "rating": "up"},
        ):
            refused = vote(b, key, **bad)
            assert refused.status_code == 400 and refused.json()["error"]["type"] == "invalid_request_error"
        assert sample(b.url, "gateway_feedback_total", model=MODEL, rating="down") == 1
        assert sample(b.url, "gateway_feedback_items_total", kind="correction") == 1
    finally:
        a.stop()
        b.stop()
    kept = {(f["request_id"], f["kind"]): f for f in feedback_rows(database_url)}
    assert kept[(request_id, "rating")]["value"] == 0.0 and kept[(request_id, "correction")]["text"] == "4"
    assert kept[(request_id, "score")]["value"] == 0.25 and kept[(request_id, "comment")]["text"] == "wrong sum"
    assert kept[("never-captured-1", "rating")]["key_id"] == key_id


def test_erasure_by_key_and_retention(double: Service, database_url: str, gateway_on) -> None:
    gateway = gateway_on(
        double,
        database_url,
        GATEWAY_CAPTURE_PERCENT="100",
        GATEWAY_CAPTURE_RETENTION_DAYS="0.00005",  # ~4 s
        GATEWAY_CAPTURE_RETENTION_INTERVAL_S="0.5",
    )
    try:
        key, key_id = create_key(gateway, "leaving")
        other, other_id = create_key(gateway, "staying")
        gone = chat(gateway, key, "my secret question")
        chat(gateway, other, "someone else's question")
        rows_when(database_url, 2)
        assert vote(gateway, key, request_id=gone.headers["x-request-id"], rating="up").status_code == 201
        erased = httpx.delete(f"{gateway.url}/admin/inferences", params={"key_id": key_id}, headers=ADMIN)
        assert erased.status_code == 200 and erased.json()["deleted"] == {"inferences": 1, "feedback": 1}
        assert [r["key_id"] for r in inference_rows(database_url)] == [other_id]
        assert (
            httpx.delete(
                f"{gateway.url}/admin/inferences",
                params={"key_id": key_id},
                headers={"Authorization": f"Bearer {other}"},
            ).status_code
            == 403
        )
        wait_until(lambda: inference_rows(database_url) == [], timeout=20, what="retention deleting old rows")
        log = gateway.logs()
    finally:
        gateway.stop()
    assert "my secret question" not in log and "someone else" not in log
