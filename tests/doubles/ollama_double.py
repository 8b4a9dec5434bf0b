"""A test double for Ollama's HTTP API, which cannot run on these machines.

Follows Ollama's public API reference for the 0.12 series (docs/api.md in github.com/ollama/ollama,
published at docs.ollama.com, which shows `version: 0.12.6`) and docs/openai.md for the /v1
compatibility layer, as the official `ollama` Python client (0.6.x) and the `openai` client call them.

Served:
  native   POST /api/chat, /api/generate (NDJSON stream or one object), /api/embed, /api/embeddings,
           GET /api/tags, /api/ps, /api/version, POST /api/show, HEAD|POST /api/blobs/sha256:<hex>,
           POST /api/create (from | files | adapters, template, system, parameters, messages,
           license, quantize), POST /api/copy, DELETE /api/delete, POST /api/pull, GET|HEAD /
  openai   POST /v1/chat/completions, /v1/completions, /v1/embeddings, GET /v1/models[/{model}]
  control  POST /_control {knob: value}, POST /_control/reset (start state; releases hangs),
           GET /_control/stats (calls and last 20 bodies per endpoint, faults fired, streams
           completed/aborted, in-flight requests, blobs, created models, knobs)

Model output is deterministic: words chosen by a hash of (model, prompt, options.seed), one token
per chunk, `--tokens` of them (capped by num_predict / max_tokens, then done_reason "length"),
`--token-delay` seconds apart. prompt_eval_count = ceil(len(prompt text) / 4). `format: "json"`
and JSON-schema formats give valid JSON. Embeddings are unit vectors hashed from the text.

Faults (see `Knobs`) hit inference endpoints only (chat, generate, embed(dings), /v1 generation),
and only requests that passed validation: a 400 or 404 never consumes an armed fault.

Omitted: real tokenisation and templates, tool calls, images, `context`, `raw` and `suffix`
semantics beyond changing the output, /api/push, registry auth, web search, GPU/VRAM accounting,
model unloading on timers (/api/ps lists models used in the last 5 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.doubles import ollama_models, ollama_native, ollama_openai
from tests.doubles.ollama_openai import openai_error
from tests.doubles.ollama_serving import ApiError, StreamCut, json_response
from tests.doubles.ollama_state import DoubleState, KnobError, Knobs, state_of

DEFAULT_MODELS = "smollm2:135m,llama3.2:1b"
VERSION = "0.12.6"
INFERENCE_PATHS = frozenset(
    {
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }
)


async def set_knobs(request: Request) -> Response:
    state = state_of(request)
    try:
        changes = orjson.loads(await request.body() or b"{}")
        if not isinstance(changes, dict):
            raise KnobError("send a JSON object of knob names to values")
        state.knobs.update(changes)
    except (orjson.JSONDecodeError, KnobError) as exc:
        return json_response({"error": str(exc)}, status=400)
    return json_response(asdict(state.knobs))


async def reset(request: Request) -> Response:
    state_of(request).reset()
    return json_response({"status": "reset"})


async def stats(request: Request) -> Response:
    return json_response(state_of(request).snapshot())


control_routes = [
    Route("/_control", set_knobs, methods=["POST"]),
    Route("/_control/reset", reset, methods=["POST"]),
    Route("/_control/stats", stats, methods=["GET"]),
]


async def render_api_error(request: Request, exc: Exception) -> Response:
    """Ollama's native errors are {"error": "..."}; its /v1 layer answers OpenAI's shape."""
    assert isinstance(exc, ApiError)
    if request.url.path.startswith("/v1/"):
        return json_response(openai_error(exc.status, exc.message), status=exc.status)
    return json_response({"error": exc.message}, status=exc.status)


class InflightCounter:
    """Counts inference requests in progress (a stream counts until its last byte)."""

    def __init__(self, app: ASGIApp, *, state: DoubleState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in INFERENCE_PATHS:
            await self.app(scope, receive, send)
            return
        stats = self.state.stats  # reset() swaps in fresh stats; decrement the ones we counted in
        stats.inflight += 1
        stats.max_inflight = max(stats.max_inflight, stats.inflight)
        try:
            await self.app(scope, receive, send)
        finally:
            stats.inflight -= 1


@contextlib.asynccontextmanager
async def closing_on_shutdown(state: DoubleState) -> AsyncIterator[None]:
    yield
    state.close()  # releases hung requests and removes uploaded blobs


def build_app(*, models: Sequence[str], knobs: Knobs, embed_dim: int = 32, version: str = VERSION) -> Starlette:
    """The double as an ASGI app (no network until a server runs it)."""
    state = DoubleState(models=list(models), knobs=knobs, embed_dim=embed_dim, version=version)
    app = Starlette(
        routes=[*ollama_native.routes, *ollama_openai.routes, *ollama_models.routes, *control_routes],
        exception_handlers={ApiError: render_api_error},
        lifespan=lambda _app: closing_on_shutdown(state),
    )
    app.state.double = state
    app.add_middleware(InflightCounter, state=state)
    return app


class HideDeliberateCuts(logging.Filter):
    """A `die_mid_stream` cut is the point of the fault, not a crash worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, StreamCut):
                return False
            group = getattr(exc, "exceptions", None)
            if group and any(isinstance(e, StreamCut) for e in group):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.doubles.ollama_double", description="Serve a deterministic stand-in for Ollama's API."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated model names present at start")
    parser.add_argument("--embed-dim", type=int, default=32, help="length of embedding vectors")
    parser.add_argument("--log-level", default="warning")
    for field_name, value in asdict(Knobs()).items():
        parser.add_argument(
            "--" + field_name.replace("_", "-"),
            type=type(value),
            default=value,
            help=f"start value of the {field_name} knob (default {value})",
        )
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1..65535, got {args.port}")
    if args.embed_dim < 1:
        parser.error("--embed-dim must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    knobs = Knobs()
    try:
        knobs.update({name: getattr(args, name) for name in asdict(knobs)})
    except KnobError as exc:
        raise SystemExit(f"ollama_double: {exc}") from None
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    app = build_app(models=models, knobs=knobs, embed_dim=args.embed_dim)
    logging.getLogger("uvicorn.error").addFilter(HideDeliberateCuts())
    # a bounded graceful shutdown: hung requests and slow streams must not keep SIGTERM waiting
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, timeout_graceful_shutdown=2
    )


if __name__ == "__main__":
    main()
