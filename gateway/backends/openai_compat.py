"""Any OpenAI-compatible server (vLLM, llama.cpp server, TGI, Ollama's /v1): SSE relayed as it arrives."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import orjson
from opentelemetry.trace import Tracer

from gateway.backends.base import Backend, Chunk, ChunkBatch, ChunkStream, Extra, usage_dict
from gateway.backends.http import BackendHTTP, stream_event
from gateway.errors import BackendUnavailable
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.settings import BackendSpec, Settings


class OpenAICompatBackend(Backend):
    kind = "openai"
    # Not forwarded from the client: the gateway owns these (the client's stream_options is applied when
    # the stream is relayed).
    own_fields: frozenset[str] = frozenset({"stream_options"})

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        super().__init__(spec, settings)
        self.max_output = settings.max_output_tokens
        # The request's extra fields (beyond OpenAI's) that reach this kind of server; the rest are not sent.
        self.passthrough = frozenset(settings.passthrough_fields.get(self.kind, ()))
        self._auth_headers = {"authorization": f"Bearer {spec.api_key.get_secret_value()}"} if spec.api_key else {}
        self._http = BackendHTTP(
            spec.url + "/v1",
            name=self.name,
            connect_timeout_s=settings.connect_timeout_s,
            address=spec.address,
            max_connections=settings.max_connections_per_backend,
            headers=self._auth_headers,
        )

    def trace_with(self, tracer: Tracer) -> None:
        self._http.tracer = tracer

    async def aclose(self) -> None:
        await self._http.aclose()

    def _body(self, req: Any, model: str, stream: bool | None, extra: Extra = None) -> bytes:
        """The request as this server takes it, with the gateway's `extra` fields last. A generation that names
        no token cap gets the gateway's maximum."""
        unsent = self.own_fields | {name for name in (req.model_extra or ()) if name not in self.passthrough}
        body = req.model_dump(exclude_none=True, exclude=unsent)
        body["model"] = model
        if stream is not None and getattr(req, "output_cap", 0) is None:
            body["max_tokens"] = self.max_output
        if stream is not None:
            body["stream"] = stream
        if stream:  # always ask for usage; the serving layer drops it if the client did not
            body["stream_options"] = {"include_usage": True}
        if extra:
            body.update(extra)
        return orjson.dumps(body)

    async def _sse(self, path: str, content: bytes, deadline: float | None) -> ChunkStream:
        """SSE data events as chunk batches; ends at [DONE]; an error event raises (after the chunks before it)."""
        async with aclosing(self._http.line_batches(path, content, deadline)) as line_batches:
            async for lines in line_batches:
                batch: ChunkBatch = []
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue  # comments (": ping") and event/id fields
                    data = line[5:].strip()
                    if data == b"[DONE]":
                        if batch:
                            yield batch
                        return
                    try:
                        batch.append(stream_event(data, self.name, "SSE event"))
                    except BackendUnavailable:
                        if batch:
                            yield batch
                        raise
                if batch:
                    yield batch
        raise BackendUnavailable(f"backend {self.name}: stream ended without [DONE]")

    @staticmethod
    async def _usage_last(batches: ChunkStream) -> ChunkStream:
        """Guarantee the contract's final usage-only chunk, whatever the server's habit."""
        usage: dict[str, Any] | None = None
        content_chunks = 0
        last: Chunk | None = None
        async with aclosing(batches):
            async for batch in batches:
                out: ChunkBatch = []
                for chunk in batch:
                    last = chunk
                    if chunk.get("usage"):
                        usage = chunk.pop("usage")
                    if chunk.get("choices"):
                        content_chunks += 1
                        out.append(chunk)
                if out:
                    yield out
        if last is not None:
            usage = usage or usage_dict(0, content_chunks)  # a server without usage: count chunks
            yield [
                {
                    **{k: last[k] for k in ("id", "object", "created", "model") if k in last},
                    "choices": [],
                    "usage": usage,
                }
            ]

    async def list_models(self) -> list[str]:
        listing = await self._http.json("GET", "/models")
        return [m["id"] for m in listing.get("data", []) if isinstance(m, dict) and "id" in m]

    async def chat(self, req: ChatCompletionRequest, model: str, extra: Extra = None) -> dict[str, Any]:
        return await self._http.json("POST", "/chat/completions", self._body(req, model, False, extra))

    def chat_stream(
        self, req: ChatCompletionRequest, model: str, deadline: float | None = None, extra: Extra = None
    ) -> ChunkStream:
        return self._usage_last(self._sse("/chat/completions", self._body(req, model, True, extra), deadline))

    async def complete(self, req: CompletionRequest, model: str, extra: Extra = None) -> dict[str, Any]:
        return await self._http.json("POST", "/completions", self._body(req, model, False, extra))

    def complete_stream(
        self, req: CompletionRequest, model: str, deadline: float | None = None, extra: Extra = None
    ) -> ChunkStream:
        return self._usage_last(self._sse("/completions", self._body(req, model, True, extra), deadline))

    async def embed(self, req: EmbeddingRequest, model: str) -> dict[str, Any]:
        return await self._http.json("POST", "/embeddings", self._body(req, model, None))
