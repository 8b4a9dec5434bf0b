"""Format compliance: does an answer honour the `response_format` the caller asked for?

The gateway counts valid/invalid answers per model (`gateway_format_compliance_total`) and per route
variant (the rollout guard's format signal): a fine-tuned model that drifts from the JSON it was
trained to emit shows up there before users complain. Checks run in a worker thread (`Verdicts`), so
a large answer or schema never holds up the event loop.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

Verdict = Literal["valid", "invalid"]


def structured_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of `response_format` to check against, or None when plain text was asked for."""
    if not response_format or response_format.get("type") not in ("json_object", "json_schema"):
        return None
    return response_format


def check_answer(response_format: dict[str, Any] | None, answer: str) -> Verdict | None:
    """`valid`/`invalid` for a JSON-format request, None when the request asked for no format.

    json_object: the answer parses as a JSON object. json_schema: it also validates against the
    schema (JSON Schema 2020-12, what OpenAI's structured outputs use).
    """
    wanted = structured_format(response_format)
    if wanted is None:
        return None
    try:
        document = json.loads(answer)
    except ValueError:
        return "invalid"
    if wanted["type"] == "json_object":
        return "valid" if isinstance(document, dict) else "invalid"
    schema = (wanted.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return "valid" if isinstance(document, dict) else "invalid"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError:
        # A broken schema is the caller's mistake, not the model's: it is not counted.
        return None
    return "valid" if Draft202012Validator(schema).is_valid(document) else "invalid"


def unary_answer(result: dict[str, Any]) -> str:
    """The first choice's text of a non-streamed chat completion."""
    choices = result.get("choices") or [{}]
    return ((choices[0].get("message") or {}).get("content")) or ""


class StreamedAnswer:
    """The first choice's text of a streamed chat completion, collected for the check (bounded)."""

    LIMIT = 1 << 20  # past this the answer is not checked (counted invalid: nobody asked for 1 MiB of JSON)

    def __init__(self) -> None:
        self._parts: list[str] = []
        self._size = 0

    def feed(self, chunk: dict[str, Any]) -> None:
        for choice in chunk.get("choices") or ():
            content = choice.get("index", 0) == 0 and (choice.get("delta") or {}).get("content")
            if content and self._size <= self.LIMIT:
                self._parts.append(content)
                self._size += len(content)

    def text(self) -> str:
        return "" if self._size > self.LIMIT else "".join(self._parts)


class Verdicts:
    """Format verdicts computed off the event loop: at most `concurrency` checks at once, in threads."""

    def __init__(self, concurrency: int = 2) -> None:
        self._slots = asyncio.Semaphore(concurrency)

    async def verdict(self, response_format: dict[str, Any] | None, answer: str | None) -> Verdict | None:
        """`check_answer` in a worker thread; None when no format was asked for or there is no answer."""
        if answer is None or structured_format(response_format) is None:
            return None
        async with self._slots:
            return await asyncio.to_thread(check_answer, response_format, answer)
