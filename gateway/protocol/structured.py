"""Format compliance: does an answer honour the `response_format` the caller asked for?

The gateway counts valid/invalid answers per model (`gateway_format_compliance_total`) and per route
variant (the rollout guard's format signal): a fine-tuned model that drifts from the JSON it was
trained to emit shows up there before users complain.

The work is bounded twice. A schema over the complexity budget never gets here (schema_budget.py
refuses it with the request). A check runs within a time budget: every keyword of the validator looks
at the deadline, and `pattern`s run on the `regex` module with a timeout (Python's own `re` cannot be
interrupted, and one pattern can backtrack for minutes). A check that runs out of time gives no verdict
(it is counted, not guessed). The pipeline runs checks away from the event loop (pipeline/verdicts.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import lru_cache
from typing import Any, Literal

import regex
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

Verdict = Literal["valid", "invalid"]
CHECK_BUDGET_S = 0.25  # one answer's check, at most
# When the check running in this thread must stop (a context variable: each check sets its own).
_DEADLINE: ContextVar[float] = ContextVar("format_check_deadline", default=float("inf"))


class CheckOverBudget(Exception):
    """The check ran out of time; the answer gets no verdict."""


def _left() -> float:
    left = _DEADLINE.get() - time.monotonic()
    if left <= 0:
        raise CheckOverBudget
    return left


def _timed(keyword: Callable[..., Any]) -> Callable[..., Iterator[ValidationError]]:
    def run(validator: Validator, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
        _left()
        result = keyword(validator, value, instance, schema)
        if result is not None:
            yield from result

    return run


def _search(pattern: str, text: str) -> bool:
    try:
        return regex.search(pattern, text, timeout=_left()) is not None
    except TimeoutError:
        raise CheckOverBudget from None


def _pattern(validator: Validator, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Validator, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for name, value in instance.items():
            if _search(pattern, name):
                yield from validator.descend(value, subschema, path=name, schema_path=pattern)


# JSON Schema 2020-12 (what OpenAI's structured outputs use), every keyword under the deadline.
BudgetedValidator = validators.extend(
    Draft202012Validator,
    {
        **{name: _timed(keyword) for name, keyword in Draft202012Validator.VALIDATORS.items()},
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
    },
)


@lru_cache(maxsize=64)
def _validator(schema_json: str) -> Validator:
    """The validator of a schema, built once for the schemas in use. The schema is not checked against
    the metaschema first (that costs more than most checks): a broken one fails when it is used."""
    return BudgetedValidator(json.loads(schema_json))


def structured_format(response_format: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of `response_format` to check against, or None when plain text was asked for."""
    if not response_format or response_format.get("type") not in ("json_object", "json_schema"):
        return None
    return response_format


def check_answer(
    response_format: dict[str, Any] | None, answer: str, *, budget_s: float = CHECK_BUDGET_S
) -> Verdict | None:
    """`valid`/`invalid` for a JSON-format request, None when the request asked for no format.

    json_object: the answer parses as a JSON object. json_schema: it also validates against the
    schema. Raises CheckOverBudget when the validation takes longer than `budget_s`.
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
    token = _DEADLINE.set(time.monotonic() + budget_s)
    try:
        return "valid" if _validator(json.dumps(schema, sort_keys=True)).is_valid(document) else "invalid"
    except CheckOverBudget:
        raise
    except Exception:  # noqa: BLE001 - a broken schema is the caller's mistake, not the model's: not counted
        return None
    finally:
        _DEADLINE.reset(token)


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
