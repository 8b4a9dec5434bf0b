"""An OpenAI-compatible server whose models answer from a table, so a comparison of versions has known
scores: `answers.json` maps model -> {user message: answer}; a message not in a model's table gets
"I do not know". It records what each call asked for (GET /_calls), to check the sampling parameters.

    python -m tests.support.answer_server --port P --answers answers.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from aiohttp import web

UNKNOWN = "I do not know"


def build_app(table: dict[str, dict[str, str]]) -> web.Application:
    calls: list[dict] = []

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in table]}
        )

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        model = body.get("model")
        if model not in table:
            return web.json_response(
                {"error": {"message": f"model {model!r} not found", "type": "not_found"}}, status=404
            )
        prompt = body["messages"][-1]["content"]
        calls.append({k: v for k, v in body.items() if k != "messages"} | {"prompt": prompt})
        content = table[model].get(prompt, UNKNOWN)
        return web.json_response(
            {
                "id": f"answer-{time.time_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(content.split()),
                    "total_tokens": len(prompt.split()) + len(content.split()),
                },
            }
        )

    async def recorded(_: web.Request) -> web.Response:
        return web.json_response(calls)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/_calls", recorded)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--answers", type=Path, required=True)
    args = parser.parse_args()
    web.run_app(build_app(json.loads(args.answers.read_text())), host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
