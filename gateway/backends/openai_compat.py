"""Any OpenAI-compatible server (vLLM, llama.cpp server, TGI, Ollama's /v1) over a pooled httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from gateway.backends.base import Backend, Chunk, error_for_status, usage_dict
from gateway.errors import BackendTimeout, BackendUnavailable, GatewayError
from gateway.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.settings import BackendSpec, Settings

# Not forwarded: the gateway owns these (the client's stream_options is applied by the serving layer).
_OWN_FIELDS = {"stream_options"}


def _error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:500].decode(errors="replace")
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message") or err)
    return str(err)


class OpenAICompatBackend(Backend):
    kind = "openai"

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        super().__init__(spec, settings)
        headers = {"content-type": "application/json"}
        if spec.api_key:
            headers["authorization"] = f"Bearer {spec.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=spec.url + "/v1", headers=headers, trust_env=False,
            timeout=httpx.Timeout(connect=settings.connect_timeout_s, read=None, write=30.0, pool=30.0),
            limits=httpx.Limits(max_connections=settings.max_connections_per_backend,
                                max_keepalive_connections=settings.max_connections_per_backend),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _transport_error(self, exc: httpx.TransportError) -> GatewayError:
        if isinstance(exc, httpx.TimeoutException):
            return BackendTimeout(f"backend {self.name} timed out")
        return BackendUnavailable(f"backend {self.name} unreachable: {type(exc).__name__}")

    def _body(self, req: Any, model: str, stream: bool | None) -> bytes:
        body = req.model_dump(exclude_none=True, exclude=_OWN_FIELDS)
        body["model"] = model
        if stream is not None:
            body["stream"] = stream
        if stream:  # always ask for usage; the serving layer drops it if the client did not
            body["stream_options"] = {"include_usage": True}
        return orjson.dumps(body)

    async def _post(self, path: str, content: bytes) -> dict[str, Any]:
        try:
            resp = await self._client.post(path, content=content)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if resp.status_code >= 400:
            raise error_for_status(resp.status_code, _error_message(resp.content), self.name)
        return orjson.loads(resp.content)

    async def _sse(self, path: str, content: bytes) -> AsyncIterator[Chunk]:
        request = self._client.build_request("POST", path, content=content)
        try:
            resp = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        try:
            if resp.status_code >= 400:
                raise error_for_status(resp.status_code, _error_message(await resp.aread()), self.name)
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                chunk = orjson.loads(data)
                if "error" in chunk:
                    raise BackendUnavailable(f"backend {self.name}: {_error_message(data.encode())}")
                yield chunk
            raise BackendUnavailable(f"backend {self.name}: stream ended without [DONE]")
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        finally:
            await resp.aclose()

    async def _usage_last(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        """Guarantee the contract's final usage-only chunk, whatever the server's habit."""
        usage: dict[str, Any] | None = None
        completion_tokens = 0
        last: Chunk | None = None
        async for chunk in chunks:
            last = chunk
            if chunk.get("usage"):
                usage = chunk.pop("usage")
            if chunk.get("choices"):
                completion_tokens += 1
                yield chunk
        if last is not None:
            usage = usage or usage_dict(0, completion_tokens)  # a server without usage: count chunks
            yield {**{k: last[k] for k in ("id", "object", "created", "model") if k in last},
                   "choices": [], "usage": usage}

    async def list_models(self) -> list[str]:
        try:
            resp = await self._client.get("/models")
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if resp.status_code >= 400:
            raise error_for_status(resp.status_code, _error_message(resp.content), self.name)
        return [m["id"] for m in orjson.loads(resp.content).get("data", [])]

    async def chat(self, req: ChatCompletionRequest, model: str) -> dict[str, Any]:
        return await self._post("/chat/completions", self._body(req, model, stream=False))

    def chat_stream(self, req: ChatCompletionRequest, model: str) -> AsyncIterator[Chunk]:
        return self._usage_last(self._sse("/chat/completions", self._body(req, model, stream=True)))

    async def complete(self, req: CompletionRequest, model: str) -> dict[str, Any]:
        return await self._post("/completions", self._body(req, model, stream=False))

    def complete_stream(self, req: CompletionRequest, model: str) -> AsyncIterator[Chunk]:
        return self._usage_last(self._sse("/completions", self._body(req, model, stream=True)))

    async def embed(self, req: EmbeddingRequest, model: str) -> dict[str, Any]:
        return await self._post("/embeddings", self._body(req, model, stream=None))
