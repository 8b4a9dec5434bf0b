"""OpenTelemetry tracing: server spans (ASGI), client spans (backend HTTP calls), and spans per gateway stage.

Tracing is on only when there is somewhere to send spans: `OTEL_EXPORTER_OTLP_ENDPOINT` set (the
standard OTLP variables configure the exporter), or an exporter passed in (tests use the SDK's
in-memory one). Otherwise nothing is instrumented and every stage span is one shared null context:
no exporter, no SDK objects.

The provider is per app, never the process-global one, so several apps (tests) do not share spans.
Attribute names follow OpenTelemetry's GenAI semantic conventions (gen_ai.*).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

SERVICE_NAME = "slm-gateway"
# Probes and scrapes would drown the traces that matter.
EXCLUDED_URLS = "healthz,readyz,metrics"


@dataclass(frozen=True, kw_only=True)
class Tracing:
    """What the app keeps on `app.state.tracing`: a tracer, and the provider when tracing is on."""

    tracer: Tracer
    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def instrument_app(self, app: Any) -> None:
        """A SERVER span per HTTP request, named after the route template ("GET /admin/keys/{key_id}"),
        through OpenTelemetry's FastAPI instrumentation; nothing when tracing is off. No spans per ASGI
        send/receive: a stream would make one per chunk."""
        if self.provider is None:
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=self.provider, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
        )

    def shutdown(self) -> None:
        """Flush queued spans (called at app shutdown)."""
        if self.provider is not None:
            self.provider.shutdown()


DISABLED = Tracing(tracer=trace.NoOpTracer())
_NOTHING = nullcontext(trace.INVALID_SPAN)  # reusable: nullcontext keeps no state


def exporter_from_env() -> SpanExporter | None:
    """The OTLP/HTTP exporter when an OTLP endpoint is configured, else None (tracing off)."""
    if not (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    # Imported here so a gateway without tracing never loads the exporter and its protobuf stack.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def setup_tracing(*, exporter: SpanExporter | None, batch: bool = True) -> Tracing:
    """A Tracing with its own provider exporting to `exporter`; with no exporter, tracing is off."""
    if exporter is None:
        return DISABLED
    service = os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return Tracing(tracer=provider.get_tracer("gateway"), provider=provider)


def _off(tracer: Tracer) -> bool:
    return isinstance(tracer, trace.NoOpTracer)


def stage_span(tracer: Tracer, stage: str, **attributes: Any) -> AbstractContextManager[Span]:
    """A span for one gateway stage (`gateway.auth`, `gateway.admission`).

    With tracing off this is a shared null context: not even a no-op span is made current
    (that alone costs microseconds per request in OpenTelemetry's API).
    """
    if _off(tracer):
        return _NOTHING
    return tracer.start_as_current_span(f"gateway.{stage}", attributes=attributes or None)


def start_backend_span(
    tracer: Tracer, *, operation: str, model: str, provider: str, backend: str, shadow: bool = False
) -> Span:
    """The backend call, named and attributed as GenAI client spans are (`chat smollm2`); a shadow copy's
    call (gateway/pipeline/shadow.py) is marked `gateway.shadow`.

    Not made current: a stream's span outlives the function that opens it; wrap the calls that
    belong to it in `as_current(span)` and end it when the stream ends.
    """
    if _off(tracer):
        return trace.INVALID_SPAN
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the pre-1.37 name, still what most trace UIs read
        "gen_ai.request.model": model,
        "server.address": backend,
    }
    if shadow:
        attributes["gateway.shadow"] = True
    return tracer.start_span(f"{operation} {model}", kind=SpanKind.CLIENT, attributes=attributes)


def as_current(span: Span) -> AbstractContextManager[Span]:
    """Make `span` current for a block without ending it (a stream's span ends with the stream)."""
    return _NOTHING if span is trace.INVALID_SPAN else trace.use_span(span, end_on_exit=False)


def backend_span(tracer: Tracer, **kwargs: Any) -> AbstractContextManager[Span]:
    """`start_backend_span` as the current span for a block, ended (error recorded) on exit."""
    if _off(tracer):
        return _NOTHING
    return trace.use_span(start_backend_span(tracer, **kwargs), end_on_exit=True)


def record_usage(
    span: Span,
    *,
    input_tokens: int | None,
    output_tokens: int | None,
    finish_reasons: Sequence[str] = (),
    response_model: str | None = None,
) -> None:
    """Put the answer's usage on the backend span once it is known (end of stream for streams)."""
    if not span.is_recording():
        return
    if input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    if output_tokens is not None:
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if finish_reasons:
        span.set_attribute("gen_ai.response.finish_reasons", list(finish_reasons))
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)


def record_result(span: Span, result: dict[str, Any]) -> None:
    """Usage and finish reasons of a unary OpenAI-shaped response."""
    if span.is_recording():
        usage = result.get("usage") or {}
        record_usage(
            span,
            input_tokens=usage.get("prompt_tokens"),
            output_tokens=usage.get("completion_tokens"),
            finish_reasons=[c["finish_reason"] for c in result.get("choices") or () if c.get("finish_reason")],
            response_model=result.get("model"),
        )


NO_CLIENT_SPAN: AbstractContextManager[tuple[Span, dict[str, str]]] = nullcontext((trace.INVALID_SPAN, {}))


@contextmanager
def client_span(tracer: Tracer, method: str, url: str) -> Iterator[tuple[Span, dict[str, str]]]:
    """A CLIENT span around one backend HTTP call, after OpenTelemetry's HTTP semantic conventions,
    and the headers (`traceparent`) that carry the trace upstream. The query string stays out."""
    parts = urlsplit(url)
    span = tracer.start_span(
        method,
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": method,
            "url.full": parts._replace(query="", fragment="").geturl(),
            "server.address": parts.hostname or "",
            "server.port": parts.port or 0,
        },
    )
    headers: dict[str, str] = {}
    propagate.inject(headers, context=trace.set_span_in_context(span))
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield span, headers
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            span.record_exception(exc)
            span.set_attribute("error.type", type(exc).__name__)
            span.set_status(Status(StatusCode.ERROR))
        raise
    finally:
        span.end()


def current_trace_id() -> str | None:
    """The active trace id as 32 hex digits, for logs; None when tracing is off."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None
