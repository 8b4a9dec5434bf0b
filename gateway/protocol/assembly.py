"""Streams and whole answers, one from the other: a stored complete answer replayed as an OpenAI SSE
stream, and streamed chunks reassembled into the complete answer (for the cache and the inference log)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.protocol.sse import SSE_DONE, sse


def replay_sse(response: Mapping[str, Any], *, include_usage: bool = False) -> Iterator[bytes]:
    """An OpenAI SSE stream rebuilt from a stored complete answer (same content, own chunking)."""
    chat = response.get("object") == "chat.completion"
    base = {
        "id": response.get("id"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": response.get("created"),
        "model": response.get("model"),
    }
    if response.get("system_fingerprint") is not None:
        base["system_fingerprint"] = response["system_fingerprint"]
    for choice in response.get("choices", []):
        index = choice.get("index", 0)
        if chat:
            message = choice.get("message") or {}
            first = {"role": message.get("role", "assistant"), "content": message.get("content") or ""}
            if message.get("tool_calls"):
                first["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
            yield sse({**base, "choices": [{"index": index, "delta": first, "finish_reason": None}]})
            yield sse(
                {**base, "choices": [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]}
            )
        else:
            yield sse(
                {
                    **base,
                    "choices": [
                        {
                            "index": index,
                            "text": choice.get("text", ""),
                            "logprobs": None,
                            "finish_reason": choice.get("finish_reason"),
                        }
                    ],
                }
            )
    if include_usage and response.get("usage") is not None:
        yield sse({**base, "choices": [], "usage": response["usage"]})
    yield SSE_DONE


class StreamAssembler:
    """Builds the complete answer from streamed chunks so a finished stream can be cached.

    `complete` is true only when every choice got a finish_reason and no error arrived; a cut
    or failed stream is never stored.
    """

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.usage: dict[str, Any] | None = None
        self.failed = False
        self._text: dict[int, list[str]] = {}
        self._role: dict[int, str] = {}
        self._finish: dict[int, str | None] = {}
        self._chat = True

    def add(self, chunk: Mapping[str, Any]) -> None:
        if "error" in chunk:
            self.failed = True
            return
        if not self.head:
            self._chat = chunk.get("object") == "chat.completion.chunk"
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            self.usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            delta = (choice.get("delta") or {}) if self._chat else {"content": choice.get("text")}
            if delta.get("tool_calls"):
                self.failed = True  # tool-call deltas are not reassembled; do not cache them
            if delta.get("role"):
                self._role[index] = delta["role"]
            if delta.get("content"):
                self._text.setdefault(index, []).append(delta["content"])
            if choice.get("finish_reason") is not None:
                self._finish[index] = choice["finish_reason"]
            else:
                self._finish.setdefault(index, None)

    @property
    def complete(self) -> bool:
        return not self.failed and bool(self._finish) and all(v is not None for v in self._finish.values())

    def response(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._finish):
            text = "".join(self._text.get(index, []))
            if self._chat:
                message = {"role": self._role.get(index, "assistant"), "content": text}
                choices.append({"index": index, "message": message, "finish_reason": self._finish[index]})
            else:
                choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": self._finish[index]})
        body = {
            **{k: v for k, v in self.head.items() if v is not None},
            "object": "chat.completion" if self._chat else "text_completion",
            "choices": choices,
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body
