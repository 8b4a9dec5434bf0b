"""OpenAI request fields -> Ollama native API arguments, and Ollama answers -> OpenAI shapes.

A request's own Ollama `options` and extra fields arrive already checked (gateway/access/bounds.py); only
the extra fields the settings let through for Ollama (`passthrough_fields`) are forwarded."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

from gateway.errors import InvalidRequest
from gateway.protocol.requests import ChatCompletionRequest, ChatMessage, CompletionRequest


def options(req: ChatCompletionRequest | CompletionRequest, max_output: int) -> dict[str, Any]:
    """Ollama `options`: the client's own `options` object, then the OpenAI fields on top. Tokens to
    generate: the request's own, else `max_output` (Ollama's own default is to generate without end)."""
    extra = req.model_extra or {}
    given = extra.get("options") or {}
    if not isinstance(given, dict):
        raise InvalidRequest("options must be an object", param="options")
    opts: dict[str, Any] = dict(given)
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("presence_penalty", "presence_penalty"),
        ("frequency_penalty", "frequency_penalty"),
    ):
        value = getattr(req, ours)
        if value is not None:
            opts[theirs] = value
    opts.setdefault("num_predict", max_output)
    if req.output_cap is not None:
        opts["num_predict"] = req.output_cap
    stop = req.stop_list()
    if stop:
        opts["stop"] = stop
    return opts


def passthrough(req: BaseModel, allowed: frozenset[str]) -> dict[str, Any]:
    """The request's extra fields the operator lets through to Ollama."""
    extra = req.model_extra or {}
    return {k: v for k, v in extra.items() if k in allowed}


def response_format(req: ChatCompletionRequest) -> str | dict[str, Any] | None:
    rf = req.response_format
    if not rf or rf.get("type") == "text":
        return None
    if rf.get("type") == "json_object":
        return "json"
    if rf.get("type") == "json_schema":
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format.json_schema.schema must be an object", param="response_format")
        return schema
    raise InvalidRequest(f"unsupported response_format type {rf.get('type')!r}", param="response_format")


def _content_and_images(msg: ChatMessage) -> tuple[str, list[str]]:
    if msg.content is None or isinstance(msg.content, str):
        return msg.content or "", []
    texts: list[str] = []
    images: list[str] = []
    for part in msg.content:
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if not url.startswith("data:") or "," not in url:
                raise InvalidRequest("only base64 data: URLs are supported for images", param="messages")
            images.append(url.split(",", 1)[1])
        else:
            raise InvalidRequest(f"unsupported content part type {kind!r}", param="messages")
    return "".join(texts), images


def _tool_calls_in(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments") or "{}"
        try:
            parsed = orjson.loads(args) if isinstance(args, str) else args
        except orjson.JSONDecodeError:
            raise InvalidRequest("tool_calls[].function.arguments must be JSON", param="messages") from None
        out.append({"function": {"name": fn.get("name", ""), "arguments": parsed}})
    return out


def messages(req: ChatCompletionRequest) -> list[dict[str, Any]]:
    out = []
    for msg in req.messages:
        content, images = _content_and_images(msg)
        role = "system" if msg.role == "developer" else msg.role
        item: dict[str, Any] = {"role": role, "content": content}
        if images:
            item["images"] = images
        if msg.tool_calls:
            item["tool_calls"] = _tool_calls_in(msg.tool_calls)
        if msg.role == "tool" and msg.name:
            item["tool_name"] = msg.name
        out.append(item)
    return out


def tool_calls_out(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Ollama gives arguments as an object and no ids; OpenAI wants a JSON string and an id."""
    out = []
    for i, call in enumerate(calls or []):
        fn = call.get("function") or {}
        out.append(
            {
                "id": f"call_{i}",
                "type": "function",
                "index": i,
                "function": {"name": fn.get("name", ""), "arguments": orjson.dumps(fn.get("arguments") or {}).decode()},
            }
        )
    return out


def finish_reason(done_reason: str | None, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return "length" if done_reason == "length" else "stop"


def generate_kwargs(req: CompletionRequest, allowed: frozenset[str]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"prompt": req.single_prompt(), **passthrough(req, allowed)}
    if req.suffix:
        kwargs["suffix"] = req.suffix
    return kwargs
