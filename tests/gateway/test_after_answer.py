"""An answer's bookkeeping runs after it went out: later, in order, in its request's context, never lost.

The queue alone, then through the app in front of the Ollama double (a real process speaking Ollama's
API) with the delay set far out of reach, so what settles the books is only what the gateway does.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from gateway.after_answer import AfterAnswer
from gateway.app import create_app
from gateway.settings import Settings
from tests.support.metrics import metric_value
from tests.support.ollama import running_ollama_double
from tests.support.processes import Service, until

MODEL = "smollm2:135m"
ADMIN_KEY = "sk-test-after-answer-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
WHO = contextvars.ContextVar("who", default="nobody")


async def test_jobs_run_later_in_order_each_in_the_context_it_was_queued_in() -> None:
    after = AfterAnswer(delay_s=0.01)
    seen: list[tuple[int, str]] = []
    for i, who in enumerate(("a", "b", "c")):
        WHO.set(who)
        after.defer(lambda i=i: seen.append((i, WHO.get())))
    assert seen == [] and after.pending == 3, "nothing runs while the answer is still going out"
    await until(lambda: len(seen) == 3, timeout=2)
    assert seen == [(0, "a"), (1, "b"), (2, "c")]
    assert after.pending == 0


async def test_a_failing_job_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    after = AfterAnswer(delay_s=60)
    ran: list[str] = []
    after.defer(lambda: ran.append("first"))
    after.defer(lambda: 1 / 0)
    after.defer(lambda: ran.append("last"))
    with caplog.at_level(logging.ERROR, logger="gateway.after_answer"):
        after.run_all()
    assert ran == ["first", "last"]
    assert [r.exc_info[0] for r in caplog.records if r.exc_info] == [ZeroDivisionError]


async def test_run_all_settles_now_and_a_job_queued_meanwhile_waits_for_the_next_timer() -> None:
    after = AfterAnswer(delay_s=0.01)
    ran: list[str] = []
    after.defer(lambda: (ran.append("outer"), after.defer(lambda: ran.append("inner"))))
    after.run_all()
    assert ran == ["outer"] and after.pending == 1
    await until(lambda: ran == ["outer", "inner"], timeout=2)


def test_without_a_running_loop_a_job_runs_at_once() -> None:
    ran: list[bool] = []
    AfterAnswer(delay_s=60).defer(lambda: ran.append(True))
    assert ran == [True]


# -- through the app ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def double() -> Iterator[Service]:
    with running_ollama_double(tokens=6) as service:
        yield service



def app_for(double: Service):  # noqa: ANN201 - the GatewayApp, with its bookkeeping held back for a minute
    app = create_app(Settings(backends=[{"kind": "ollama", "url": double.url, "name": "ollama-a"}],
                              admin_key=ADMIN_KEY, discovery_interval_s=3600))
    app.state.after_answer.delay_s = 60
    return app


def test_answers_leave_before_their_bookkeeping_and_a_next_request_does_not_wait_for_it(
        double: Service, access_lines: io.StringIO) -> None:
    app = app_for(double)
    with TestClient(app) as client:
        assert client.post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
        streamed = client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert streamed.status_code == 200 and streamed.text.endswith("data: [DONE]\n\n")
        # Two answers out; their usage, metrics and log lines (two jobs each) still queued.
        assert app.state.after_answer.pending == 4
        assert access_lines.getvalue() == ""
        # A read of the books (any route but the inference ones) settles them first.
        assert metric_value(client, "gateway_llm_requests_total", outcome="success") == 2
        assert app.state.after_answer.pending == 1  # only the /metrics request's own line, queued as it ended
    lines = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    assert [(line["path"], line["completion_tokens"]) for line in lines if line["path"] != "/metrics"] == [
        ("/v1/chat/completions", 6), ("/v1/chat/completions", 6)]


def test_shutdown_runs_the_bookkeeping_still_queued(double: Service, access_lines: io.StringIO) -> None:
    app = app_for(double)
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert response.status_code == 200
        assert app.state.after_answer.pending == 2
    assert app.state.after_answer.pending == 0
    (line,) = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    assert line["request_id"] == response.headers["x-request-id"]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (response.json()["usage"]["prompt_tokens"], 6)
    today = datetime.now(UTC).date()
    (row,) = asyncio.run(app.state.policy.usage.query("admin", today, today))  # no Redis: the store is in memory
    assert (row.model, row.requests, row.output_tokens) == (MODEL, 1, 6)
