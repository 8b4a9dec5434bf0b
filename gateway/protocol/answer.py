"""What one request got: the answer a replica gave (or why none came), as the steps after the call
read it (relay, settle: metrics, charges, route signals, capture)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import BackendTimeout, ClientError, NoHealthyBackend
from gateway.protocol.assembly import StreamAssembler

NO_BACKEND = "-"  # the backend label of a request no replica answered
# success | client_error | backend_error | timeout | unavailable | cancelled, or cache_hit (no backend call)
OUTCOMES = ("success", "client_error", "backend_error", "timeout", "unavailable", "cancelled")
ERROR_OUTCOMES = frozenset({"backend_error", "timeout", "unavailable"})


def outcome_of(exc: BaseException) -> str:
    """The outcome of a request that raised `exc` instead of answering."""
    if isinstance(exc, (BackendTimeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, NoHealthyBackend):
        return "unavailable"
    if isinstance(exc, ClientError):
        return "client_error"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "backend_error"


@dataclass(slots=True)
class Answer:
    """What the serving layer learned about one answer (or one failed attempt to get it)."""

    model: str  # the model that answered (or was to answer)
    backend: str = NO_BACKEND
    outcome: str = "success"
    elapsed_s: float = 0.0
    backend_s: float | None = None  # a unary call's time inside the backend, for gateway_overhead_seconds
    ttft_s: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # arrived whole (every choice finished, no error)
    result: dict[str, Any] | None = None  # a non-streamed answer's response object ...
    body: bytes | None = None  # ... and the JSON bytes sent for it
    assembled: StreamAssembler | None = None  # a streamed answer rebuilt (for the cache or the inference log)
    text: str | None = None  # the answer's text, when a response_format asks for it to be checked
    response_format: Any = None
    answered: bool = True  # False: no replica answered (the reservation is given back, nothing is charged)
    relayed: int = 0  # a stream's chunks that carried content, as they were relayed (about a token each)

    def estimate_usage(self, prompt_tokens: int) -> None:
        """A stream that ended without its usage chunk (the client hung up, the deadline passed, the backend
        broke off) is charged what was streamed: `prompt_tokens` (the admission's estimate of the prompt) and
        a token per content chunk relayed."""
        if not self.usage and self.answered and self.relayed:
            completion = self.relayed
            self.usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }

    def whole(self) -> dict[str, Any] | bytes | None:
        """The complete answer as a client got it (the JSON bytes sent, or the stream reassembled), or None
        when it did not arrive whole."""
        if self.outcome != "success" or not self.complete:
            return None
        if self.result is not None:
            return self.body if self.body is not None else self.result
        if self.assembled is None or not self.assembled.complete:
            return None
        if self.usage:
            self.assembled.usage = self.usage
        return self.assembled.response()
