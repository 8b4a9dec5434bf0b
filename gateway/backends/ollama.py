"""Ollama's native API through the official `ollama` AsyncClient (NDJSON streams, exact token counts)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import ollama

from gateway.backends import ollama_translate as tr
from gateway.backends.base import Backend, Chunk, completion_id, error_for_status, now, usage_dict
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError, InvalidRequest
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.settings import BackendSpec, Settings

T = TypeVar("T")


def _translate(exc: BaseException, backend: str) -> GatewayError:
    """The one place where ollama-client and transport errors become gateway errors."""
    if isinstance(exc, ollama.ResponseError):
        if exc.status_code == -1:  # an {"error": ...} line inside a 200 stream
            return BackendUnavailable(f"backend {backend}: {exc.error}")
        return error_for_status(exc.status_code, exc.error, backend)
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeout(f"backend {backend} timed out")
    if isinstance(exc, (ConnectionError, httpx.TransportError)):
        return BackendUnavailable(f"backend {backend} unreachable: {type(exc).__name__}")
    raise exc


class OllamaBackend(Backend):
    kind = "ollama"

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        super().__init__(spec, settings)
        # read=None: first-token and total deadlines are enforced by the serving layer.
        timeout = httpx.Timeout(connect=settings.connect_timeout_s, read=None, write=30.0, pool=30.0)
        limits = httpx.Limits(max_connections=settings.max_connections_per_backend,
                              max_keepalive_connections=settings.max_connections_per_backend)
        self._client = ollama.AsyncClient(host=spec.url, timeout=timeout, limits=limits, trust_env=False)

    async def aclose(self) -> None:
        await self._client._client.aclose()

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (ollama.ResponseError, ConnectionError, httpx.TransportError) as exc:
            raise _translate(exc, self.name) from None

    async def _iterate(self, open_stream: Callable[[], Awaitable[AsyncIterator[Any]]]) -> AsyncIterator[Any]:
        try:
            async for part in await open_stream():
                yield part
        except (ollama.ResponseError, ConnectionError, httpx.TransportError) as exc:
            raise _translate(exc, self.name) from None

    @staticmethod
    def _chat_chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None) -> Chunk:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    @staticmethod
    def _text_chunk(cid: str, created: int, model: str, text: str, finish: str | None) -> Chunk:
        return {"id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]}

    async def list_models(self) -> list[str]:
        listing = await self._call(self._client.list)
        return [m.model for m in listing.models if m.model]

    def _chat_args(self, req: ChatCompletionRequest, model: str, stream: bool) -> dict[str, Any]:
        if req.n != 1:
            raise InvalidRequest("n > 1 is not supported by Ollama backends", param="n")
        args: dict[str, Any] = {"model": model, "messages": tr.messages(req), "stream": stream,
                                "options": tr.options(req, req.output_cap), **tr.passthrough(req)}
        fmt = tr.response_format(req)
        if fmt is not None:
            args["format"] = fmt
        if req.tools:
            args["tools"] = req.tools
        return args

    async def chat(self, req: ChatCompletionRequest, model: str) -> dict[str, Any]:
        args = self._chat_args(req, model, stream=False)
        r = await self._call(lambda: self._client.chat(**args))
        calls = tr.tool_calls_out(r.message.tool_calls)
        message: dict[str, Any] = {"role": "assistant", "content": r.message.content or ""}
        if calls:
            message["tool_calls"] = calls
        return {"id": completion_id("chatcmpl"), "object": "chat.completion", "created": now(), "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": tr.finish_reason(r.done_reason, bool(calls))}],
                "usage": usage_dict(r.prompt_eval_count or 0, r.eval_count or 0)}

    async def chat_stream(self, req: ChatCompletionRequest, model: str) -> AsyncIterator[Chunk]:
        args = self._chat_args(req, model, stream=True)
        cid, created, first = completion_id("chatcmpl"), now(), True
        saw_tool_calls = False
        async for part in self._iterate(lambda: self._client.chat(**args)):
            delta: dict[str, Any] = {"content": part.message.content or ""}
            if first:
                delta["role"] = "assistant"
                first = False
            if part.message.tool_calls:
                delta["tool_calls"] = tr.tool_calls_out(part.message.tool_calls)
                saw_tool_calls = True
            if delta["content"] or len(delta) > 1:
                yield self._chat_chunk(cid, created, model, delta, None)
            if part.done:
                yield self._chat_chunk(cid, created, model, {}, tr.finish_reason(part.done_reason, saw_tool_calls))
                yield {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                       "choices": [], "usage": usage_dict(part.prompt_eval_count or 0, part.eval_count or 0)}
                return
        raise BackendUnavailable(f"backend {self.name}: stream ended before done")

    def _generate_args(self, req: CompletionRequest, model: str, stream: bool) -> dict[str, Any]:
        if req.n != 1:
            raise InvalidRequest("n > 1 is not supported by Ollama backends", param="n")
        return {"model": model, "stream": stream, "options": tr.options(req, req.output_cap),
                **tr.generate_kwargs(req)}

    async def complete(self, req: CompletionRequest, model: str) -> dict[str, Any]:
        args = self._generate_args(req, model, stream=False)
        r = await self._call(lambda: self._client.generate(**args))
        text = (args["prompt"] + r.response) if req.echo else r.response
        return {"id": completion_id("cmpl"), "object": "text_completion", "created": now(), "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": tr.finish_reason(r.done_reason, False)}],
                "usage": usage_dict(r.prompt_eval_count or 0, r.eval_count or 0)}

    async def complete_stream(self, req: CompletionRequest, model: str) -> AsyncIterator[Chunk]:
        args = self._generate_args(req, model, stream=True)
        cid, created = completion_id("cmpl"), now()
        async for part in self._iterate(lambda: self._client.generate(**args)):
            if part.response:
                yield self._text_chunk(cid, created, model, part.response, None)
            if part.done:
                yield self._text_chunk(cid, created, model, "", tr.finish_reason(part.done_reason, False))
                yield {"id": cid, "object": "text_completion", "created": created, "model": model,
                       "choices": [], "usage": usage_dict(part.prompt_eval_count or 0, part.eval_count or 0)}
                return
        raise BackendUnavailable(f"backend {self.name}: stream ended before done")

    async def embed(self, req: EmbeddingRequest, model: str) -> dict[str, Any]:
        texts = req.texts()
        extra = req.model_extra or {}
        kwargs: dict[str, Any] = {k: extra[k] for k in ("truncate", "keep_alive", "options") if k in extra}
        if req.dimensions:
            kwargs["dimensions"] = req.dimensions
        r = await self._call(lambda: self._client.embed(model=model, input=texts, **kwargs))
        data = [{"object": "embedding", "index": i, "embedding": list(vec)} for i, vec in enumerate(r.embeddings)]
        tokens = r.prompt_eval_count or 0
        return {"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
