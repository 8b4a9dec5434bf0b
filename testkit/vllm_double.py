"""A test double for vLLM's OpenAI-compatible server with run-time LoRA adapters (no GPU here).

Follows vLLM's documentation (docs.vllm.ai, "LoRA Adapters": "Dynamically serving LoRA Adapters") and
its server code for the answers (vllm/entrypoints/openai/serving_models.py):
  POST /v1/load_lora_adapter {"lora_name", "lora_path"}
      200 text "Success: LoRA adapter 'NAME' added successfully."
      400 InvalidUserInput "Both 'lora_name' and 'lora_path' must be provided." | "The lora adapter
          'NAME' has already been loaded."
      404 NotFoundError "No adapter found for PATH" (no adapter_config.json there)
  POST /v1/unload_lora_adapter {"lora_name"}
      200 text "Success: LoRA adapter 'NAME' removed successfully."; 404 "... cannot be found."
  (both only with VLLM_ALLOW_RUNTIME_LORA_UPDATING: `--no-runtime-lora` leaves them out, 404)
  GET /v1/models: the base model's card, then one card per loaded adapter with `parent` = the base.
  POST /v1/chat/completions, /v1/completions: `model` is the base or a loaded adapter, else 404
      {"object": "error", "message": "The model `X` does not exist.", "type": "NotFoundError", "code": 404}.
Errors use vLLM's ErrorResponse shape {"object": "error", "message", "type", "param", "code"}.

Answers are deterministic and say which model made them: the text is "<model>: w1 w2 ..." with
`--tokens` words hashed from (model, prompt), one SSE chunk per word `--token-delay` seconds apart.

vLLM does not refuse a load when its adapter caches are full (`--max-loras` adapters per batch,
`--max-cpu-loras` in CPU memory): it evicts the least recently used from its CPU cache and reads it
from disk again on the next use, and requests for more distinct adapters than `--max-loras` wait for
a batch slot. So this double never refuses one either; it counts what is loaded (and the peak), which
is what the gateway's own cap (`max_adapters`) must keep below the limit.

Control: POST /_control/restart (a restarted server: run-time adapters forgotten),
GET /_control/stats (loaded adapters, peak, loads/unloads, requests per model, in flight per model).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections import Counter
from pathlib import Path

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]


class State:
    def __init__(self, base: str, tokens: int, token_delay: float) -> None:
        self.base, self.tokens, self.token_delay = base, tokens, token_delay
        self.adapters: dict[str, str] = {}  # lora_name -> lora_path
        self.peak = 0
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.requests: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()


def error(message: str, kind: str, status: int) -> Response:
    body = {"object": "error", "message": message, "type": kind, "param": None, "code": status}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def words_for(model: str, prompt: str, n: int) -> list[str]:
    digest = hashlib.sha256(f"{model}\0{prompt}".encode()).digest()
    return [WORDS[digest[i % len(digest)] % len(WORDS)] for i in range(n)]


def build_app(state: State, runtime_lora: bool) -> Starlette:
    async def models(_: Request) -> Response:
        cards = [
            {
                "id": state.base,
                "object": "model",
                "created": 0,
                "owned_by": "vllm",
                "root": state.base,
                "parent": None,
                "max_model_len": 2048,
            }
        ]
        cards += [
            {"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": path, "parent": state.base}
            for name, path in state.adapters.items()
        ]
        return Response(orjson.dumps({"object": "list", "data": cards}), media_type="application/json")

    async def load(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        name, path = body.get("lora_name"), body.get("lora_path")
        if not name or not path:
            return error("Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput", 400)
        if name in state.adapters:
            return error(f"The lora adapter '{name}' has already been loaded.", "InvalidUserInput", 400)
        if not (Path(path) / "adapter_config.json").is_file():
            return error(f"No adapter found for {path}", "NotFoundError", 404)
        state.adapters[name] = path
        state.loads.append(name)
        state.peak = max(state.peak, len(state.adapters))
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        name = body.get("lora_name")
        if not name and not body.get("lora_int_id"):
            return error("either 'lora_name' and 'lora_int_id' needs to be provided.", "InvalidUserInput", 400)
        if name not in state.adapters:
            return error(f"The lora adapter '{name}' cannot be found.", "NotFoundError", 404)
        del state.adapters[name]
        state.unloads.append(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    async def generate(request: Request, chat: bool) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        model = body.get("model")
        if model != state.base and model not in state.adapters:
            return error(f"The model `{model}` does not exist.", "NotFoundError", 404)
        prompt = orjson.dumps(body.get("messages")).decode() if chat else str(body.get("prompt"))
        n = min(state.tokens, body.get("max_tokens") or body.get("max_completion_tokens") or state.tokens)
        words = [f"{model}:", *words_for(model, prompt, n)]
        state.requests[model] += 1
        rid, created = f"cmpl-{hashlib.sha1(prompt.encode()).hexdigest()[:12]}", int(time.time())
        usage = {
            "prompt_tokens": len(prompt) // 4 + 1,
            "completion_tokens": n,
            "total_tokens": len(prompt) // 4 + 1 + n,
        }
        obj = "chat.completion" if chat else "text_completion"
        if not body.get("stream"):
            text = " ".join(words)
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                if chat
                else {"index": 0, "text": text, "finish_reason": "length"}
            )
            return Response(
                orjson.dumps(
                    {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage}
                ),
                media_type="application/json",
            )

        async def events():
            state.in_flight[model] += 1
            try:
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    last = i == len(words) - 1
                    choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
                    choice["finish_reason"] = "length" if last else None
                    chunk = {
                        "id": rid,
                        "object": obj + ".chunk" if chat else obj,
                        "created": created,
                        "model": model,
                        "choices": [choice],
                    }
                    yield b"data: " + orjson.dumps(chunk) + b"\n\n"
                    if state.token_delay:
                        await asyncio.sleep(state.token_delay)
                if (body.get("stream_options") or {}).get("include_usage"):
                    yield (
                        b"data: "
                        + orjson.dumps(
                            {
                                "id": rid,
                                "object": obj,
                                "created": created,
                                "model": model,
                                "choices": [],
                                "usage": usage,
                            }
                        )
                        + b"\n\n"
                    )
                yield b"data: [DONE]\n\n"
            finally:
                state.in_flight[model] -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    async def chat(request: Request) -> Response:
        return await generate(request, chat=True)

    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    async def restart(_: Request) -> Response:
        state.adapters.clear()
        return Response(b"{}", media_type="application/json")

    async def stats(_: Request) -> Response:
        return Response(
            orjson.dumps(
                {
                    "loaded": sorted(state.adapters),
                    "peak": state.peak,
                    "loads": state.loads,
                    "unloads": state.unloads,
                    "requests": dict(state.requests),
                    "in_flight": {k: v for k, v in state.in_flight.items() if v},
                }
            ),
            media_type="application/json",
        )

    routes = [
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/health", models),
        Route("/_control/restart", restart, methods=["POST"]),
        Route("/_control/stats", stats),
    ]
    if runtime_lora:
        routes += [
            Route("/v1/load_lora_adapter", load, methods=["POST"]),
            Route("/v1/unload_lora_adapter", unload, methods=["POST"]),
        ]
    return Starlette(routes=routes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct", help="served base model name")
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--no-runtime-lora", action="store_true", help="VLLM_ALLOW_RUNTIME_LORA_UPDATING unset")
    args = parser.parse_args()
    app = build_app(State(args.model, args.tokens, args.token_delay), runtime_lora=not args.no_runtime_lora)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
