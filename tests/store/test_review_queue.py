"""/admin/review: the answers that most need a person, most urgent first, handed to one reviewer at a time
and gone from everyone's queue once reviewed; real gateway processes, Redis, SQLite and Postgres."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.store.queries import add_feedback
from testkit.processes import Service, wait_until
from tests.store import support
from tests.store.support import ADMIN, chat, create_key, inference_rows, on_db


def call(gateway: Service, key: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{gateway.url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10, **kw)


def next_id(gateway: Service, key: str, **body: Any) -> str | None:
    got = call(gateway, key, "POST", "/admin/review/next", json=body)
    if got.status_code == 204:
        return None
    assert got.status_code == 200, got.text
    return str(got.json()["request_id"])


@pytest.fixture
def flagged(double: Service, redis: Service, database_url: str) -> Iterator[dict[str, Any]]:
    gateway = support.gateway_on(
        double, database_url, GATEWAY_CAPTURE_PERCENT="100", REDIS_URL=f"redis://127.0.0.1:{redis.port}/0"
    )
    try:
        app, _ = create_key(gateway, "app")
        sent = [chat(gateway, app, f"question {i}").headers["x-request-id"] for i in range(21)]
        sent.append(chat(gateway, app, "as json", response_format={"type": "json_object"}).headers["x-request-id"])
        wait_until(lambda: len(inference_rows(database_url)) == len(sent), timeout=15, what="every answer captured")
        down = call(gateway, app, "POST", "/v1/feedback", json={"request_id": sent[3], "rating": "down"})
        assert down.status_code == 201, down.text
        on_db(database_url, lambda e: add_feedback(e, request_id=sent[5], kind="judge", value=0.2, source="judge"))
        yield {
            "gateway": gateway,
            "sent": sent,
            "app": app,
            "url": database_url,
            "r1": create_key(gateway, "lead-1", ("reviewer",))[0],
            "r2": create_key(gateway, "lead-2", ("reviewer",))[0],
        }
    finally:
        gateway.stop()


def expected_queue(url: str, sent: list[str]) -> list[tuple[str, str]]:
    """What the queue should hold, from the stored rows: (request id, reason), most urgent first."""
    rows = list(reversed(inference_rows(url)))  # newest first
    broken = [r["request_id"] for r in rows if r["format_valid"] is False]
    sampled = [
        r["request_id"] for r in rows if r["id"] % 10 == 0 and r["request_id"] not in {sent[3], sent[5], *broken}
    ]
    return (
        [(sent[3], "thumbs_down")]
        + [(i, "format_failure") for i in broken if i != sent[3]]
        + [(sent[5], "low_judge_score")]
        + [(i, "sample") for i in sampled]
    )


def test_the_queue_puts_thumbs_down_then_broken_formats_then_low_scores_then_a_sample(flagged: dict[str, Any]) -> None:
    listed = call(flagged["gateway"], flagged["r1"], "GET", "/admin/review/queue")
    assert listed.status_code == 200, listed.text
    got = [(row["request_id"], row["reason"]) for row in listed.json()["data"]]
    assert got == expected_queue(flagged["url"], flagged["sent"])
    assert len(got) >= 4 and len(got) < len(flagged["sent"])  # the unflagged rest is sampled, not all queued


def test_each_reviewer_gets_their_own_item_and_a_reviewed_one_leaves_every_queue(flagged: dict[str, Any]) -> None:
    gateway, r1, r2, sent = flagged["gateway"], flagged["r1"], flagged["r2"], flagged["sent"]
    queue = [i for i, _ in expected_queue(flagged["url"], sent)]
    first = call(gateway, r1, "POST", "/admin/review/next")
    assert first.status_code == 200, first.text
    item = first.json()
    assert item["request_id"] == queue[0] == sent[3] and item["reason"] == "thumbs_down"
    assert item["messages"] == [{"role": "user", "content": "question 3"}] and item["answer"]
    assert [(f["kind"], f["role"]) for f in item["feedback"]] == [("rating", "owner")]
    assert next_id(gateway, r2) == queue[1]  # r1 holds the first
    assert next_id(gateway, r1) == queue[0]  # r1 still holds it
    corrected = call(gateway, r1, "POST", "/v1/feedback", json={"request_id": sent[3], "correction": "better"})
    assert corrected.status_code == 201, corrected.text
    remaining = [row["request_id"] for row in call(gateway, r2, "GET", "/admin/review/queue").json()["data"]]
    assert sent[3] not in remaining and remaining == queue[1:]
    assert next_id(gateway, r1) == queue[2]  # queue[1] is r2's
    assert next_id(gateway, r1, skip=[queue[2]]) == queue[3]  # passed over by r1
    assert next_id(gateway, r1, route="no-such-route") is None  # nothing there: 204


def test_only_reviewers_and_admins_use_the_queue_and_bad_bodies_are_refused(flagged: dict[str, Any]) -> None:
    gateway, app, r1 = flagged["gateway"], flagged["app"], flagged["r1"]
    assert call(gateway, app, "GET", "/admin/review/queue").status_code == 403
    assert call(gateway, app, "POST", "/admin/review/next").status_code == 403
    assert call(gateway, ADMIN["Authorization"].split()[1], "GET", "/admin/review/queue").status_code == 200
    for body, field in (({"skip": "x"}, "skip"), ({"route": ""}, "route"), ({"other": 1}, "other")):
        bad = call(gateway, r1, "POST", "/admin/review/next", json=body)
        assert bad.status_code == 400 and field in str(bad.json()["error"]["param"]), (body, bad.text)
