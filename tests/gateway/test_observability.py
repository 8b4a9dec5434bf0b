"""Traces, JSON access logs, feedback and format compliance, through the real gateway app in front of
the Ollama double (a real process speaking Ollama's API)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.app import create_app
from gateway.settings import Settings
from testkit.ollama import running_ollama_double
from testkit.processes import Service, wait_until
from tests.support.metrics import metric_value, sample_in

MODEL = "smollm2:135m"
ADMIN_KEY = "sk-test-observability-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def double() -> Iterator[Service]:
    with running_ollama_double(tokens=6) as service:
        yield service


def settings_for(double: Service) -> Settings:
    return Settings(
        backends=[{"kind": "ollama", "url": double.url, "name": "ollama-a"}],
        admin_key=ADMIN_KEY,
        discovery_interval_s=3600,
        sqlite_path=":memory:",
    )


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def traced(double: Service, spans: InMemorySpanExporter) -> Iterator[TestClient]:
    app = create_app(settings_for(double), span_exporter=spans)
    with TestClient(app) as client:
        yield client


@pytest.fixture
def untraced(double: Service) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(double))) as client:
        yield client


def log_records(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def logged(stream: io.StringIO, lines: int) -> list[dict]:
    """The access log once it holds `lines` lines: a request's line is written just after its answer
    went out."""
    wait_until(lambda: len(log_records(stream)) >= lines, timeout=5, what=f"{lines} access-log line(s)")
    return log_records(stream)


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in finished}


def test_a_chat_request_produces_a_trace_with_genai_attributes(traced: TestClient, spans: InMemorySpanExporter) -> None:
    response = traced.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    traced.app.state.tracing.provider.force_flush()
    found = by_name(spans.get_finished_spans())
    backend = found[f"chat {MODEL}"]
    assert backend.attributes["gen_ai.operation.name"] == "chat"
    assert backend.attributes["gen_ai.request.model"] == MODEL
    assert backend.attributes["gen_ai.system"] == "ollama"
    assert backend.attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert backend.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    assert list(backend.attributes["gen_ai.response.finish_reasons"]) == [
        response.json()["choices"][0]["finish_reason"]
    ]
    server = found["POST /v1/chat/completions"]
    auth = found["gateway.auth"]
    assert {backend.context.trace_id, auth.context.trace_id} == {server.context.trace_id}
    assert backend.parent.span_id == server.context.span_id
    # the HTTP call to Ollama is a child of the backend span (client spans on the aiohttp session)
    (http_call,) = [s for s in spans.get_finished_spans() if s.parent and s.parent.span_id == backend.context.span_id]
    assert http_call.name == "POST" and http_call.attributes["http.response.status_code"] == 200
    assert http_call.attributes["url.full"].endswith("/api/chat")


def test_a_streamed_request_records_usage_when_the_stream_ends(traced: TestClient, spans: InMemorySpanExporter) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with traced.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2][len("data: ") :])["usage"]
    traced.app.state.tracing.provider.force_flush()
    backend = by_name(spans.get_finished_spans())[f"chat {MODEL}"]
    assert backend.attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"] > 0
    assert backend.attributes["gen_ai.response.finish_reasons"]


def test_access_log_is_one_json_line_per_request_with_ids(
    traced: TestClient, spans: InMemorySpanExporter, access_lines: io.StringIO
) -> None:
    response = traced.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "X-Request-ID": "req-obs-1"})
    assert response.headers["x-request-id"] == "req-obs-1"
    (line,) = [r for r in logged(access_lines, 1) if r["path"] == "/v1/chat/completions"]
    usage = response.json()["usage"]
    assert line["request_id"] == "req-obs-1"
    assert line["status"] == 200 and line["key_id"] == "admin"
    assert line["model"] == MODEL and line["backend"] == "ollama-a"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert line["latency_ms"] > 0
    traced.app.state.tracing.provider.force_flush()
    server = by_name(spans.get_finished_spans())["POST /v1/chat/completions"]
    assert line["trace_id"] == format(server.context.trace_id, "032x")
    assert "Say hi" not in access_lines.getvalue(), "prompts must not be logged"


def test_successful_probes_and_scrapes_are_not_logged(untraced: TestClient, access_lines: io.StringIO) -> None:
    for path in ("/healthz", "/metrics"):
        assert untraced.get(path).status_code == 200
    assert untraced.get("/v1/models", headers=AUTH).status_code == 200
    assert [line["path"] for line in logged(access_lines, 1)] == ["/v1/models"]


def test_errors_are_logged_too(untraced: TestClient, access_lines: io.StringIO) -> None:
    response = untraced.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"}, headers=AUTH)
    assert response.status_code == 404
    (line,) = logged(access_lines, 1)
    assert line["status"] == 404 and line["request_id"] == response.headers["x-request-id"]


def test_without_an_exporter_nothing_is_traced(untraced: TestClient, access_lines: io.StringIO) -> None:
    assert not untraced.app.state.tracing.enabled
    assert untraced.post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
    (line,) = logged(access_lines, 1)
    assert line["trace_id"] is None


def test_every_route_gets_a_server_span_named_after_its_template(
    traced: TestClient, spans: InMemorySpanExporter
) -> None:
    assert traced.get("/v1/models", headers=AUTH).status_code == 200
    assert traced.get("/admin/keys/key-that-does-not-exist", headers=AUTH).status_code == 404
    assert traced.get("/healthz").status_code == 200
    traced.app.state.tracing.provider.force_flush()
    names = {span.name for span in spans.get_finished_spans() if span.kind is SpanKind.SERVER}
    assert {"GET /v1/models", "GET /admin/keys/{key_id}"} <= names
    assert not any("key-that-does-not-exist" in name or "healthz" in name for name in names)


def test_feedback_is_counted_per_model_of_the_rated_request(untraced: TestClient) -> None:
    before = metric_value(untraced, "gateway_feedback_total", model=MODEL, rating="down")
    answer = untraced.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    vote = {"request_id": answer.headers["x-request-id"], "rating": "down", "comment": "too short"}
    response = untraced.post("/v1/feedback", json=vote, headers=AUTH)
    assert response.status_code == 201, response.text
    assert response.json()["model"] == MODEL
    assert response.headers["x-request-id"], "every response carries X-Request-ID"
    assert metric_value(untraced, "gateway_feedback_total", model=MODEL, rating="down") == before + 1


def test_feedback_for_a_request_no_gateway_kept(untraced: TestClient) -> None:
    """Kept and counted, but not joined to an answer."""
    before = sample_in(untraced.get("/metrics").text, "gateway_feedback_total", model="unknown", rating="up") or 0
    unknown = untraced.post("/v1/feedback", json={"request_id": "elsewhere-1", "rating": "up"}, headers=AUTH)
    assert unknown.status_code == 202
    assert unknown.json()["joined"] is False and unknown.json()["stored"] is True
    assert (
        metric_value(untraced, "gateway_feedback_total", model="unknown", variant="unknown", rating="up") == before + 1
    )
    named = untraced.post(
        "/v1/feedback", json={"request_id": "elsewhere-1", "rating": "up", "model": MODEL}, headers=AUTH
    )
    assert named.status_code == 201
    assert metric_value(untraced, "gateway_feedback_total", model=MODEL, rating="up") >= 1
    not_served = untraced.post("/v1/feedback", json={"request_id": "x", "rating": "up", "model": "nope"}, headers=AUTH)
    assert not_served.status_code == 404


@pytest.mark.parametrize(
    "vote",
    [
        {"request_id": "r1", "rating": "meh"},
        {"rating": "up"},
        {"request_id": "r1", "rating": "up", "comment": "x" * 2001},
    ],
)
def test_bad_feedback_is_a_clear_400(untraced: TestClient, vote: dict) -> None:
    response = untraced.post("/v1/feedback", json=vote, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_feedback_needs_a_key(untraced: TestClient) -> None:
    assert untraced.post("/v1/feedback", json={"request_id": "r1", "rating": "up"}).status_code == 401


@pytest.mark.parametrize("stream", [False, True])
def test_json_format_answers_are_counted(untraced: TestClient, stream: bool) -> None:
    before = metric_value(untraced, "gateway_format_compliance_total", model=MODEL, result="valid")
    body = {**CHAT, "stream": stream, "response_format": {"type": "json_object"}}
    response = untraced.post("/v1/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 200
    assert metric_value(untraced, "gateway_format_compliance_total", model=MODEL, result="valid") == before + 1
    plain = untraced.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    assert plain.status_code == 200
    assert metric_value(untraced, "gateway_format_compliance_total", model=MODEL, result="valid") == before + 1


def test_quality_series_exist_before_any_vote(untraced: TestClient) -> None:
    """Registered with the model at discovery, so dashboards show 0 rather than "no data"."""
    for rating in ("up", "down"):
        assert metric_value(untraced, "gateway_feedback_total", model=MODEL, rating=rating) >= 0
    for result in ("valid", "invalid"):
        assert metric_value(untraced, "gateway_format_compliance_total", model=MODEL, result=result) >= 0


def test_start_up_leaves_its_heap_to_the_permanent_generation(double: Service) -> None:
    """Full collections must not walk the start-up heap while requests wait."""
    import gc

    gc.unfreeze()
    with TestClient(create_app(settings_for(double))) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 10_000  # modules, the app, the pools


def test_http_series_of_the_dashboards_are_exported(untraced: TestClient) -> None:
    """`http_requests_total` and `http_request_duration_seconds` (README, Grafana's latency panels)."""
    ok = untraced.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert ok.status_code == 200
    text = untraced.get("/metrics").text
    assert 'http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 1.0' in text
    assert 'http_request_duration_seconds_count{handler="/v1/chat/completions",method="POST"} 1.0' in text
