"""Ollama's native API (docs/api.md): NDJSON streams and exact token counts from the final line."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import orjson
from opentelemetry.trace import Tracer

from gateway.backends import ollama_translate as tr
from gateway.backends.base import Backend, Chunk, ChunkBatch, ChunkStream, Extra, completion_id, now, usage_dict
from gateway.backends.http import BackendHTTP, stream_event
from gateway.errors import BackendUnavailable, InvalidRequest
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.settings import BackendSpec, Settings


def _chat_chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> Chunk:
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _text_chunk(cid: str, created: int, model: str, text: str, finish: str | None) -> Chunk:
    return {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


def _usage(part: dict[str, Any]) -> dict[str, int]:
    return usage_dict(int(part.get("prompt_eval_count") or 0), int(part.get("eval_count") or 0))


class OllamaBackend(Backend):
    kind = "ollama"

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        super().__init__(spec, settings)
        self.max_output = settings.max_output_tokens
        self.passthrough = frozenset(settings.passthrough_fields.get(self.kind, ()))
        self._http = BackendHTTP(
            spec.url,
            name=self.name,
            connect_timeout_s=settings.connect_timeout_s,
            address=spec.address,
            max_connections=settings.max_connections_per_backend,
        )

    def trace_with(self, tracer: Tracer) -> None:
        self._http.tracer = tracer

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list_models(self) -> list[str]:
        tags = await self._http.json("GET", "/api/tags")
        return [m.get("model") or m["name"] for m in tags.get("models", []) if m.get("model") or m.get("name")]

    def _chat_body(self, req: ChatCompletionRequest, model: str, stream: bool, extra: Extra) -> dict[str, Any]:
        if req.n != 1:
            raise InvalidRequest("n > 1 is not supported by Ollama backends", param="n")
        body: dict[str, Any] = {
            "model": model,
            "messages": tr.messages(req),
            "stream": stream,
            "options": tr.options(req, self.max_output),
            **tr.passthrough(req, self.passthrough),
        }
        fmt = tr.response_format(req)
        if fmt is not None:
            body["format"] = fmt
        if req.tools:
            body["tools"] = req.tools
        if extra:
            body.update(extra)
        return body

    async def chat(self, req: ChatCompletionRequest, model: str, extra: Extra = None) -> dict[str, Any]:
        r = await self._http.json("POST", "/api/chat", orjson.dumps(self._chat_body(req, model, False, extra)))
        msg = r.get("message") or {}
        calls = tr.tool_calls_out(msg.get("tool_calls"))
        message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": completion_id("chatcmpl"),
            "object": "chat.completion",
            "created": now(),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": tr.finish_reason(r.get("done_reason"), bool(calls)),
                }
            ],
            "usage": _usage(r),
        }

    async def _chunk_batches(
        self,
        path: str,
        body: dict[str, Any],
        convert: Callable[[dict[str, Any]], ChunkBatch],
        head: dict[str, Any],
        deadline: float | None,
    ) -> ChunkStream:
        """Ollama's NDJSON parts as OpenAI chunk batches (`convert` maps one part); the part with
        `done` ends the stream, followed by the usage-only chunk (`head` + usage) the contract wants.
        An {"error": ...} line (Ollama's mid-stream failure, status 200) raises, after the chunks
        before it went out."""
        async with aclosing(self._http.line_batches(path, orjson.dumps(body), deadline)) as line_batches:
            async for lines in line_batches:
                batch: ChunkBatch = []
                for line in lines:
                    try:  # the common case inline (one per token); `stream_event` words the errors
                        part = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        part = None
                    if type(part) is not dict or "error" in part:
                        try:
                            part = stream_event(line, self.name, "NDJSON line")
                        except BackendUnavailable:
                            if batch:
                                yield batch
                            raise
                    batch += convert(part)
                    if part.get("done"):
                        batch.append({**head, "choices": [], "usage": _usage(part)})
                        yield batch
                        async for _ in line_batches:  # read to the body's end (usually here already): reuse
                            pass
                        return
                if batch:
                    yield batch
        raise BackendUnavailable(f"backend {self.name}: stream ended before done")

    def chat_stream(
        self, req: ChatCompletionRequest, model: str, deadline: float | None = None, extra: Extra = None
    ) -> ChunkStream:
        cid, created = completion_id("chatcmpl"), now()
        state = {"first": True, "tool_calls": False}

        def convert(part: dict[str, Any]) -> ChunkBatch:
            msg = part.get("message") or {}
            delta: dict[str, Any] = {"content": msg.get("content") or ""}
            if state["first"]:
                delta["role"] = "assistant"
                state["first"] = False
            if msg.get("tool_calls"):
                delta["tool_calls"] = tr.tool_calls_out(msg["tool_calls"])
                state["tool_calls"] = True
            # `_chat_chunk`'s dict, written out: this runs once per token
            out = (
                [
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
                    }
                ]
                if delta["content"] or len(delta) > 1
                else []
            )
            if part.get("done"):
                out.append(
                    _chat_chunk(cid, created, model, {}, tr.finish_reason(part.get("done_reason"), state["tool_calls"]))
                )
            return out

        head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
        return self._chunk_batches("/api/chat", self._chat_body(req, model, True, extra), convert, head, deadline)

    def _generate_body(self, req: CompletionRequest, model: str, stream: bool, extra: Extra) -> dict[str, Any]:
        if req.n != 1:
            raise InvalidRequest("n > 1 is not supported by Ollama backends", param="n")
        return {
            "model": model,
            "stream": stream,
            "options": tr.options(req, self.max_output),
            **tr.generate_kwargs(req, self.passthrough),
            **(extra or {}),
        }

    async def complete(self, req: CompletionRequest, model: str, extra: Extra = None) -> dict[str, Any]:
        body = self._generate_body(req, model, False, extra)
        r = await self._http.json("POST", "/api/generate", orjson.dumps(body))
        text = (body["prompt"] + r.get("response", "")) if req.echo else r.get("response", "")
        return {
            "id": completion_id("cmpl"),
            "object": "text_completion",
            "created": now(),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": tr.finish_reason(r.get("done_reason"), False),
                }
            ],
            "usage": _usage(r),
        }

    def complete_stream(
        self, req: CompletionRequest, model: str, deadline: float | None = None, extra: Extra = None
    ) -> ChunkStream:
        body = self._generate_body(req, model, True, extra)
        cid, created = completion_id("cmpl"), now()

        def convert(part: dict[str, Any]) -> ChunkBatch:
            out = [_text_chunk(cid, created, model, part["response"], None)] if part.get("response") else []
            if part.get("done"):
                out.append(_text_chunk(cid, created, model, "", tr.finish_reason(part.get("done_reason"), False)))
            return out

        head = {"id": cid, "object": "text_completion", "created": created, "model": model}
        return self._chunk_batches("/api/generate", body, convert, head, deadline)

    async def embed(self, req: EmbeddingRequest, model: str) -> dict[str, Any]:
        extra = req.model_extra or {}
        body: dict[str, Any] = {
            "model": model,
            "input": req.texts(),
            **({"options": extra["options"]} if "options" in extra else {}),
            **tr.passthrough(req, self.passthrough),
        }
        if req.dimensions:
            body["dimensions"] = req.dimensions
        r = await self._http.json("POST", "/api/embed", orjson.dumps(body))
        data = [{"object": "embedding", "index": i, "embedding": vec} for i, vec in enumerate(r.get("embeddings", []))]
        tokens = int(r.get("prompt_eval_count") or 0)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
