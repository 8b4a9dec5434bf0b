"""The real `python -m gateway` process: with OTEL_EXPORTER_OTLP_ENDPOINT set it ships spans over
OTLP/HTTP (received here by a stand-in collector that decodes the protobuf, as a collector would),
and its stdout is one JSON line per request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from testkit.ollama import running_ollama_double
from testkit.processes import Service, free_port, python_service, wait_until

MODEL = "smollm2:135m"
ADMIN_KEY = "sk-otlp-test-0123456789abcdef"


class Collector(ThreadingHTTPServer):
    """Accepts OTLP/HTTP protobuf trace exports on /v1/traces and keeps the spans."""

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), CollectorHandler)
        self.spans: list[dict[str, Any]] = []
        self.lock = threading.Lock()


class CollectorHandler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(404)
            return
        request = ExportTraceServiceRequest.FromString(body)
        with self.server.lock:
            for resource_spans in request.resource_spans:
                service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.server.spans.append(
                            {
                                "name": span.name,
                                "service": service,
                                "trace_id": span.trace_id.hex(),
                                "attributes": {a.key: a.value for a in span.attributes},
                            }
                        )
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    server = Collector(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def gateway(collector: Collector) -> Iterator[Service]:
    with running_ollama_double(models=[MODEL], tokens=5) as double:
        port = free_port()
        env = {
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_ADMIN_KEY": ADMIN_KEY,
            "GATEWAY_BACKENDS": json.dumps([{"kind": "ollama", "url": double.url, "name": "ollama-a"}]),
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.server_address[1]}",
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        service = python_service("gateway-otlp", ["-m", "gateway"], port, env).start()
        try:
            service.wait_http("/healthz")
            yield service
        finally:
            service.stop()


def test_spans_reach_an_otlp_collector(gateway: Service, collector: Collector) -> None:
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        timeout=30,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-ID": "otlp-1"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text

    def backend_span() -> dict[str, Any] | None:
        with collector.lock:
            return next((s for s in collector.spans if s["name"] == f"chat {MODEL}"), None)

    wait_until(lambda: backend_span() is not None, timeout=20, what="backend span at the collector")
    span = backend_span()
    assert span["service"] == "gateway-under-test"
    assert span["attributes"]["gen_ai.request.model"].string_value == MODEL
    assert span["attributes"]["gen_ai.usage.output_tokens"].int_value == response.json()["usage"]["completion_tokens"]
    wait_until(
        lambda: any(
            s["name"] == "POST /v1/chat/completions" and s["trace_id"] == span["trace_id"]
            for s in list(collector.spans)
        ),
        timeout=20,
        what="server span in the same trace",
    )


def test_the_process_logs_one_json_line_per_request(gateway: Service) -> None:
    response = httpx.get(
        gateway.url + "/v1/models",
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "X-Request-ID": "otlp-json-log"},
        timeout=10,
    )
    assert response.status_code == 200

    def access_line() -> dict[str, Any] | None:
        for line in gateway.logs().splitlines():
            if '"otlp-json-log"' in line:
                return json.loads(line)
        return None

    wait_until(lambda: access_line() is not None, timeout=10, what="access log line")
    line = access_line()
    assert line["event"] == "request" and line["path"] == "/v1/models" and line["status"] == 200
    assert len(line["trace_id"]) == 32
    # every line the process wrote is JSON (uvicorn's start-up lines included)
    for raw in gateway.logs().splitlines():
        assert isinstance(json.loads(raw), dict), raw
