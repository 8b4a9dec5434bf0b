"""Capture: which answers go to the inference log (sampled per route, per key, or globally), and each
as the row the store writes. Sampling is decided before the call (a streamed answer is then reassembled);
the row is built after the client has its answer and handed to the store's writer, which never blocks.
Prompts are never logged or used as labels."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.access.principal import Principal
from gateway.model_routes.targeting import Target
from gateway.observability.failures import FailureLog
from gateway.protocol.answer import Answer
from gateway.protocol.requests import InferenceRequest
from gateway.store.writer import CaptureWriter

# What the client sent that is the prompt; every other field is a parameter.
PROMPT_FIELDS = ("messages", "prompt")
NOT_PARAMS = frozenset({*PROMPT_FIELDS, "model", "stream", "stream_options", "user"})


@dataclass(frozen=True, slots=True)
class Sampled:
    """A request chosen for the inference log: what the request path knows that the answer does not."""

    request_id: str
    endpoint: str  # chat | completions
    body: dict[str, Any]  # the validated request, as sent to the backend (route params applied)
    principal: Principal
    target: Target


def _answer_parts(answer: Answer) -> tuple[str | None, Any, str | None]:
    """(text, tool calls, finish reason) of the first choice, from a unary result or a reassembled stream."""
    result = answer.result
    if result is None and answer.assembled is not None and answer.assembled.head:
        result = answer.assembled.response()
    choice = ((result or {}).get("choices") or [None])[0]
    if not choice:
        return answer.text, None, None
    message = choice.get("message")
    if message is not None:
        return message.get("content"), message.get("tool_calls"), choice.get("finish_reason")
    return choice.get("text"), None, choice.get("finish_reason")


def inference_row(
    sampled: Sampled, answer: Answer, verdict: str | None, *, now: datetime | None = None
) -> dict[str, Any]:
    """The `inferences` row of a sampled request's answer (`verdict`: its format check, if one was asked)."""
    now = now or datetime.now(UTC)
    body, target = sampled.body, sampled.target
    text, tool_calls, finish = _answer_parts(answer)
    prompt = body.get("messages") if "messages" in body else {"prompt": body.get("prompt")}
    usage = answer.usage or {}
    route = target.route
    return {
        "request_id": sampled.request_id,
        "created_at": now - timedelta(seconds=answer.elapsed_s),
        "route": route.name if route is not None else None,
        "route_version": route.version if route is not None else None,
        "model": target.public or target.model,
        "variant": answer.model,
        "key_id": sampled.principal.key_id,
        "endpoint": sampled.endpoint,
        "messages": prompt,
        "params": {k: v for k, v in body.items() if k not in NOT_PARAMS},
        "answer": text,
        "tool_calls": tool_calls,
        "finish_reason": finish,
        "outcome": answer.outcome,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "latency_s": answer.elapsed_s,
        "ttft_s": answer.ttft_s,
        "cache_hit": answer.outcome == "cache_hit",
        "format_valid": None if verdict is None or text is None else verdict == "valid",
    }


class Capture:
    def __init__(
        self,
        writer: CaptureWriter | None,
        *,
        failures: FailureLog,
        percent: float = 0.0,
        key_percent: Mapping[str, float] | None = None,
    ) -> None:
        self.writer = writer
        self.failures = failures
        self.percent = percent
        self.key_percent = dict(key_percent or {})

    def share(self, principal: Principal, target: Target) -> float:
        """The highest share any switch gives this request (route, the key's own record, the key in
        GATEWAY_CAPTURE_KEYS, global), in percent."""
        route_share = 0.0
        capture = target.route.spec.capture if target.route is not None else None
        if capture is not None:
            route_share = capture.percent
        return max(
            self.percent,
            route_share,
            self.key_percent.get(principal.key_id or "", 0.0),
            principal.capture_percent or 0.0,
        )

    def sample(
        self, request_id: str, endpoint: str, principal: Principal, target: Target, req: InferenceRequest
    ) -> Sampled | None:
        """The request's capture when it is sampled for the inference log, else None (the common, free case)."""
        if self.writer is None or endpoint == "embeddings":
            return None
        share = self.share(principal, target)
        if share <= 0 or (share < 100 and random.random() * 100 >= share):
            return None
        return Sampled(
            request_id=request_id,
            endpoint=endpoint,
            body=req.model_dump(exclude_none=True),
            principal=principal,
            target=target,
        )

    def keep(self, sampled: Sampled, answer: Answer, verdict: str | None) -> None:
        """Build the row and enqueue it (never blocks; a full queue drops it, counted)."""
        if self.writer is None:
            return
        try:
            self.writer.offer(inference_row(sampled, answer, verdict))
        except Exception as exc:  # noqa: BLE001 - a capture bug must not become the client's problem
            self.failures.record("capture", exc, traceback=True, request_id=sampled.request_id)
