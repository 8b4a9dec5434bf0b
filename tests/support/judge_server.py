"""A deterministic judge: a small OpenAI-compatible server (GET /v1/models, POST /v1/chat/completions)
that grades by a rule instead of a model, so judge runs have known results.

The rule: the answer between <answer> and </answer> in the prompt scores 1.0 when it contains the word
"good", 0.5 when it contains "fair", else 0.0; an answer containing "garble" gets a reply with no score
in it, as a small judge model sometimes gives. Run: python -m tests.support.judge_server --port P
"""

from __future__ import annotations

import argparse
import json
import re
import time

from aiohttp import web

MODEL = "judge-1"
_ANSWER = re.compile(r"<answer>\n?(.*?)\n?</answer>", re.S)


def rule(prompt: str) -> float:
    match = _ANSWER.search(prompt)
    answer = match.group(1).lower() if match else ""
    return 1.0 if "good" in answer else 0.5 if "fair" in answer else 0.0


async def models(_: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]})


async def chat(request: web.Request) -> web.Response:
    body = await request.json()
    prompt = body["messages"][-1]["content"]
    score = rule(prompt)
    match = _ANSWER.search(prompt)
    garbled = match is not None and "garble" in match.group(1)
    content = "I cannot grade this." if garbled else json.dumps({"score": score, "reason": f"rule gave {score}"})
    return web.json_response(
        {
            "id": f"judge-{time.time_ns()}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": 8,
                "total_tokens": len(prompt.split()) + 8,
            },
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=parser.parse_args().port, print=None)


if __name__ == "__main__":
    main()
