"""GET /admin/inferences and /admin/inferences/{request_id}: the inference log read by reviewers and admins,
through a real gateway process capturing into SQLite and a real Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.store.queries import add_feedback
from testkit.processes import Service, wait_until
from tests.store import support
from tests.store.support import ADMIN, MODEL, chat, create_key, inference_rows, on_db


def get(gateway: Service, key: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{gateway.url}{path}", params=params, headers={"Authorization": f"Bearer {key}"}, timeout=10)


def vote(gateway: Service, key: str, status: int = 201, **body: Any) -> None:
    sent = httpx.post(f"{gateway.url}/v1/feedback", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert sent.status_code == status, sent.text


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [row["request_id"] for row in response.json()["data"]]


@pytest.fixture
def logged(double: Service, redis: Service, database_url: str) -> Iterator[dict[str, Any]]:
    """A gateway capturing everything, two inference keys' answers with feedback and a judge score, and a
    reviewer key."""
    gateway = support.gateway_on(
        double, database_url, GATEWAY_CAPTURE_PERCENT="100", REDIS_URL=f"redis://127.0.0.1:{redis.port}/0"
    )
    try:
        a, a_id = create_key(gateway, "app-a")
        b, b_id = create_key(gateway, "app-b")
        reviewer, _ = create_key(gateway, "support-lead", ("reviewer",))
        sent = [chat(gateway, a, f"question {i}").headers["x-request-id"] for i in range(5)]
        sent += [chat(gateway, b, f"other {i}").headers["x-request-id"] for i in range(2)]
        sent.append(chat(gateway, a, "as json", response_format={"type": "json_object"}).headers["x-request-id"])
        wait_until(lambda: len(inference_rows(database_url)) == len(sent), timeout=15, what="every answer captured")
        vote(gateway, a, request_id=sent[0], rating="down")
        vote(gateway, a, request_id=sent[1], rating="up")
        vote(gateway, a, request_id=sent[2], rating="down", correction="the answer it should have been")
        vote(gateway, b, 202, request_id=sent[3], rating="down")  # not B's answer: kept unverified, ignored here
        on_db(database_url, lambda e: add_feedback(e, request_id=sent[4], kind="judge", value=0.2, source="judge"))
        yield {"gateway": gateway, "sent": sent, "a": a, "b_id": b_id, "reviewer": reviewer, "url": database_url}
    finally:
        gateway.stop()


def test_a_reviewer_pages_through_every_captured_answer_newest_first(logged: dict[str, Any]) -> None:
    gateway, reviewer = logged["gateway"], logged["reviewer"]
    captured = [row["request_id"] for row in reversed(inference_rows(logged["url"]))]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = get(gateway, reviewer, "/admin/inferences", limit=3, **({"cursor": cursor} if cursor else {}))
        seen += ids(page)
        pages += 1
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert seen == captured and pages == 3
    first = get(gateway, reviewer, "/admin/inferences", limit=1).json()["data"][0]
    assert first["model"] == MODEL and first["outcome"] == "success" and first["answer_preview"]
    assert first["created_at"].startswith(str(datetime.now(UTC).year)) and "id" not in first


def test_filters_find_the_answers_that_need_a_person(logged: dict[str, Any]) -> None:
    gateway, reviewer, sent = logged["gateway"], logged["reviewer"], logged["sent"]

    def listed(**params: Any) -> list[str]:
        return ids(get(gateway, reviewer, "/admin/inferences", **params))

    assert listed(rating="down") == [sent[2], sent[0]]  # B's down-vote on A's answer does not count
    assert listed(rating="up") == [sent[1]]
    assert listed(has_correction="true") == [sent[2]]
    assert sent[2] not in listed(has_correction="false") and len(listed(has_correction="false")) == len(sent) - 1
    assert listed(judge_below=0.5) == [sent[4]] and listed(judge_below=0.1) == []
    assert listed(key_id=logged["b_id"]) == [sent[6], sent[5]]
    failed = [r["request_id"] for r in reversed(inference_rows(logged["url"])) if r["format_valid"] is False]
    assert listed(format_failed="true") == failed
    assert listed(model=MODEL, variant=MODEL) == list(reversed(sent))
    assert listed(route="no-such-route") == []
    now = datetime.now(UTC)
    assert listed(since=(now + timedelta(minutes=1)).isoformat()) == []
    assert listed(since=(now - timedelta(hours=1)).isoformat(), until=(now + timedelta(minutes=1)).isoformat()) == list(
        reversed(sent)
    )
    assert listed(since=(now - timedelta(hours=1)).replace(tzinfo=None).isoformat())  # no zone: UTC
    assert listed(rating="down", has_correction="true") == [sent[2]]


def test_one_inference_in_full_with_its_feedback_and_judge_results(logged: dict[str, Any]) -> None:
    gateway, reviewer, sent = logged["gateway"], logged["reviewer"], logged["sent"]
    corrected = get(gateway, reviewer, f"/admin/inferences/{sent[2]}")
    assert corrected.status_code == 200, corrected.text
    body = corrected.json()
    row = next(r for r in inference_rows(logged["url"]) if r["request_id"] == sent[2])
    assert body["messages"] == [{"role": "user", "content": "question 2"}] and body["answer"] == row["answer"]
    assert body["prompt_tokens"] == row["prompt_tokens"] and body["latency_s"] == row["latency_s"]
    kinds = {(f["kind"], f["role"]): f for f in body["feedback"]}
    assert kinds[("correction", "owner")]["text"] == "the answer it should have been"
    assert kinds[("rating", "owner")]["value"] == 0.0 and body["judge"] == []
    judged = get(gateway, reviewer, f"/admin/inferences/{sent[4]}").json()
    assert [(j["value"], j["source"]) for j in judged["judge"]] == [(0.2, "judge")] and judged["feedback"] == []
    missing = get(gateway, reviewer, "/admin/inferences/never-captured")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "inference_not_found"


def test_only_reviewers_and_admins_read_and_bad_queries_are_refused_naming_the_field(logged: dict[str, Any]) -> None:
    gateway, reviewer, sent = logged["gateway"], logged["reviewer"], logged["sent"]
    for path in ("/admin/inferences", f"/admin/inferences/{sent[0]}"):
        refused = get(gateway, logged["a"], path)
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error", path
        assert get(gateway, ADMIN["Authorization"].split()[1], path).status_code == 200, path
    # a reviewer reads and rates; it does not manage keys or erase the log
    assert get(gateway, reviewer, "/admin/keys").status_code == 403
    erase = httpx.delete(
        f"{gateway.url}/admin/inferences",
        params={"key_id": logged["b_id"]},
        headers={"Authorization": f"Bearer {reviewer}"},
        timeout=10,
    )
    assert erase.status_code == 403
    for params, field in (
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"judge_below": 2}, "judge_below"),
        ({"rating": "meh"}, "rating"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-12-02T00:00:00Z", "until": "2026-12-01T00:00:00Z"}, "since"),
        ({"key_id": "a key with spaces"}, "key_id"),
    ):
        bad = get(gateway, reviewer, "/admin/inferences", **params)
        assert bad.status_code == 400, (params, bad.text)
        assert bad.json()["error"]["param"] == f"query.{field}" and "Traceback" not in bad.text, (params, bad.text)
