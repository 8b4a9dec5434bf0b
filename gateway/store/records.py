"""One captured inference as a row: built from the request and the `Answer` after the client has it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.accounting import Answer, Ticket
from gateway.format_check import check_answer

# What the client sent that is the prompt; every other field is a parameter.
PROMPT_FIELDS = ("messages", "prompt")
NOT_PARAMS = frozenset({*PROMPT_FIELDS, "model", "stream", "stream_options", "user"})


@dataclass(frozen=True, slots=True)
class CaptureContext:
    """What the request path knows that the answer does not: its id and what was asked."""

    request_id: str
    endpoint: str  # chat | completions
    body: dict[str, Any]  # the validated request, as sent to the backend (route params applied)


def _answer_parts(answer: Answer, ticket: Ticket) -> tuple[str | None, Any, str | None]:
    """(text, tool calls, finish reason) of the first choice, from a unary result or a reassembled stream."""
    result = answer.result
    if result is None and ticket.assembler is not None and ticket.assembler.head:
        result = ticket.assembler.response()
    choice = ((result or {}).get("choices") or [None])[0]
    if not choice:
        return answer.text, None, None
    message = choice.get("message")
    if message is not None:
        return message.get("content"), message.get("tool_calls"), choice.get("finish_reason")
    return choice.get("text"), None, choice.get("finish_reason")


def _format_valid(answer: Answer, text: str | None) -> bool | None:
    if answer.response_format is None or answer.outcome != "success" or text is None:
        return None
    return check_answer(answer.response_format, text) == "valid"


def inference_row(ctx: CaptureContext, ticket: Ticket, answer: Answer, *,
                  now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    body = ctx.body
    text, tool_calls, finish = _answer_parts(answer, ticket)
    prompt = body.get("messages") if "messages" in body else {"prompt": body.get("prompt")}
    usage = answer.usage or {}
    route = ticket.route.name if ticket.route is not None else None
    return {
        "request_id": ctx.request_id,
        "created_at": now - timedelta(seconds=answer.elapsed_s),
        "route": route,
        "route_version": ticket.route.version if ticket.route is not None else None,
        "model": ticket.public or ticket.model,
        "variant": answer.model,
        "key_id": ticket.principal.key_id,
        "endpoint": ctx.endpoint,
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
        "format_valid": _format_valid(answer, text),
    }
