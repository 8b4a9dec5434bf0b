"""The one interface every backend kind implements, and the status -> error mapping they share.

Backends speak OpenAI's response shapes to the rest of the gateway: a unary call returns the
OpenAI response dict; a stream yields OpenAI chunk dicts and ends with one usage-only chunk
(`choices: []`, `usage: {...}`) so the serving layer can count tokens whether or not the client
asked for `stream_options.include_usage`.

Streams yield *batches*: every chunk that arrived together (since the last read) in one
non-empty list, so the serving layer writes them to the client in one write; only the stream's
first chunk comes alone, so the first token is not held back by the rest of its read. A model streaming
token by token gives batches of one; a backend running ahead of a busy gateway gives bigger ones,
and the gateway's cost per chunk falls exactly when it is loaded.
"""

from __future__ import annotations

import abc
import os
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from opentelemetry.trace import Tracer

from gateway.errors import (
    BackendClientError,
    BackendOverloaded,
    BackendUnavailable,
    GatewayError,
    ReplicaLacksModel,
)
from gateway.protocol.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from gateway.settings import BackendSpec, Settings

Chunk = dict[str, Any]
ChunkBatch = list[Chunk]  # never empty
ChunkStream = AsyncGenerator[ChunkBatch, None]
# Fields the gateway adds to a request's body for this server (a llama.cpp `lora` list), after the client's.
Extra = Mapping[str, Any] | None


class Backend(abc.ABC):
    kind: str

    def __init__(self, spec: BackendSpec, settings: Settings) -> None:
        self.spec = spec
        self.name = spec.label
        self.settings = settings

    @abc.abstractmethod
    async def list_models(self) -> list[str]:
        """Names of the models this replica serves now."""

    def offers(self, model: str) -> bool:
        """Whether a request for `model`, which the last discovery listed here, should come here now.
        True unless what is offered changes between discoveries (vLLM adapters: once one replica loaded
        an adapter, the others stop offering it: gateway/adapters/)."""
        return True

    def version(self, model: str) -> str | None:
        """What names the weights behind `model` here beyond its name (an adapter's digest), for the response
        cache's key; None when the name says it all."""
        return None

    @abc.abstractmethod
    async def chat(self, req: ChatCompletionRequest, model: str, extra: Extra = None) -> dict[str, Any]: ...

    # Streams: `deadline` (event-loop time) is when the whole stream must have ended; past it the
    # stream raises BackendTimeout. Enforced once per stream by the transport, not per batch.
    @abc.abstractmethod
    def chat_stream(
        self, req: ChatCompletionRequest, model: str, deadline: float | None = None, extra: Extra = None
    ) -> ChunkStream: ...

    @abc.abstractmethod
    async def complete(self, req: CompletionRequest, model: str, extra: Extra = None) -> dict[str, Any]: ...

    @abc.abstractmethod
    def complete_stream(
        self, req: CompletionRequest, model: str, deadline: float | None = None, extra: Extra = None
    ) -> ChunkStream: ...

    @abc.abstractmethod
    async def embed(self, req: EmbeddingRequest, model: str) -> dict[str, Any]: ...

    def trace_with(self, tracer: Tracer) -> None:
        """Make a client span for each of this replica's HTTP calls (called when tracing is on)."""
        return None

    async def aclose(self) -> None:
        return None


def error_for_status(status: int, message: str, backend: str) -> GatewayError:
    """Which failures fail over (and count against the replica) and which go back to the caller."""
    text = f"backend {backend}: {message}" if message else f"backend {backend} answered {status}"
    if status == 404:
        return ReplicaLacksModel(text)
    if status in (429, 503):
        return BackendOverloaded(text)
    if 400 <= status < 500:
        return BackendClientError(status, message or f"backend rejected the request ({status})")
    return BackendUnavailable(text)


def completion_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(12).hex()}"


def now() -> int:
    return int(time.time())


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
