"""Unit tests of the observability helpers: format check, JSON formatter, recent-request memory."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode, Tracer

from gateway.backends.http import BackendHTTP
from gateway.errors import BackendUnavailable
from gateway.observability.access_log import AccessRecord, RecentRequests
from gateway.observability.logs import JsonFormatter
from gateway.observability.tracing import DISABLED, backend_span, current_trace_id, exporter_from_env, record_usage
from gateway.protocol.structured import StreamedAnswer, check_answer, unary_answer
from testkit.processes import free_port

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
    },
}


@pytest.mark.parametrize(
    ("response_format", "answer", "expected"),
    [
        (None, "anything", None),
        ({"type": "text"}, "{", None),
        ({"type": "json_object"}, '{"a": 1}', "valid"),
        ({"type": "json_object"}, '{"a": 1', "invalid"),
        ({"type": "json_object"}, "[1, 2]", "invalid"),
        ({"type": "json_object"}, "Sure! Here is JSON: {}", "invalid"),
        (SCHEMA, '{"name": "Ada", "age": 36}', "valid"),
        (SCHEMA, '{"name": "Ada", "age": "36"}', "invalid"),
        (SCHEMA, '{"name": "Ada"}', "invalid"),
        (SCHEMA, "not json", "invalid"),
        ({"type": "json_schema", "json_schema": {"schema": {"type": 12}}}, "{}", None),  # the caller's broken schema
    ],
)
def test_check_answer(response_format: dict | None, answer: str, expected: str | None) -> None:
    assert check_answer(response_format, answer) == expected


def test_streamed_answer_joins_the_first_choice_deltas() -> None:
    answer = StreamedAnswer()
    for piece in ('{"na', 'me": ', '"Ada", "age": 36}'):
        answer.feed({"choices": [{"index": 0, "delta": {"content": piece}}]})
    answer.feed({"choices": [{"index": 1, "delta": {"content": "ignored"}}]})
    answer.feed({"choices": [], "usage": {"completion_tokens": 3}})
    assert answer.text() == '{"name": "Ada", "age": 36}'
    assert check_answer(SCHEMA, answer.text()) == "valid"


def test_streamed_answer_past_the_bound_is_not_kept() -> None:
    answer = StreamedAnswer()
    for _ in range(3):
        answer.feed({"choices": [{"index": 0, "delta": {"content": "x" * (StreamedAnswer.LIMIT // 2)}}]})
    assert answer.text() == ""
    assert check_answer({"type": "json_object"}, answer.text()) == "invalid"


def test_unary_answer() -> None:
    assert unary_answer({"choices": [{"message": {"content": "{}"}}]}) == "{}"
    assert unary_answer({"choices": []}) == ""


def test_json_formatter_merges_dicts_and_wraps_text() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord(
        "gateway.access", logging.INFO, __file__, 1, {"event": "request", "status": 200}, None, None
    )
    line = json.loads(formatter.format(record))
    assert line["event"] == "request" and line["status"] == 200 and line["level"] == "info"
    text = logging.LogRecord("gateway", logging.WARNING, __file__, 1, "backend %s slow", ("b1",), None)
    assert json.loads(formatter.format(text))["message"] == "backend b1 slow"


def test_recent_requests_is_bounded() -> None:
    recent = RecentRequests(capacity=2)
    for i in range(3):
        recent.remember(f"r{i}", AccessRecord(model=f"m{i}"))
    assert recent.record_of("r0") is None
    assert (recent.record_of("r1").model, recent.record_of("r2").model) == ("m1", "m2")


def test_disabled_tracing_records_nothing() -> None:
    with backend_span(DISABLED.tracer, operation="chat", model="m", provider="ollama", backend="b") as span:
        assert not span.is_recording()
        record_usage(span, input_tokens=1, output_tokens=2)
        assert current_trace_id() is None


@pytest.fixture
def memory_tracer() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def test_client_spans_send_traceparent_upstream(memory_tracer: tuple[Tracer, InMemorySpanExporter]) -> None:
    tracer, exporter = memory_tracer
    seen: dict[str, str | None] = {}

    async def echo(request: web.Request) -> web.Response:
        seen["traceparent"] = request.headers.get("traceparent")
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/api/chat", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    http = BackendHTTP(f"http://127.0.0.1:{port}", name="a", connect_timeout_s=1, max_connections=2)
    http.tracer = tracer
    try:
        assert await http.json("POST", "/api/chat?token=secret", b"{}") == {}
    finally:
        await http.aclose()
        await runner.cleanup()
    (span,) = exporter.get_finished_spans()
    assert seen["traceparent"].split("-")[1:3] == [
        format(span.context.trace_id, "032x"),
        format(span.context.span_id, "016x"),
    ]
    assert span.attributes["url.full"] == f"http://127.0.0.1:{port}/api/chat", "query strings stay out of traces"
    assert span.attributes["http.response.status_code"] == 200


async def test_client_span_of_a_refused_connection_is_an_error(
    memory_tracer: tuple[Tracer, InMemorySpanExporter],
) -> None:
    tracer, exporter = memory_tracer
    port = free_port()
    http = BackendHTTP(f"http://127.0.0.1:{port}", name="a", connect_timeout_s=1, max_connections=2)
    http.tracer = tracer
    try:
        with pytest.raises(BackendUnavailable):
            await http.json("GET", "/api/tags")
    finally:
        await http.aclose()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "ClientConnectorError"
    assert f"127.0.0.1:{port}" in span.events[0].attributes["exception.message"], "the span says where it failed"


def test_tracing_is_off_without_an_otlp_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert exporter_from_env() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert type(exporter_from_env()).__name__ == "OTLPSpanExporter"
