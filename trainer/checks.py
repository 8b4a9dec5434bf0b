"""Task checks on one generated answer. Each returns pass/fail; the evaluation averages them into scores."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def _parse(text: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return False, None


def exact_match(output: str, reference: str) -> bool:
    """Same answer; JSON answers are compared as parsed values, so key spacing does not matter."""
    ok_out, out = _parse(output)
    ok_ref, ref = _parse(reference)
    if ok_out and ok_ref:
        return out == ref
    return output.strip() == reference.strip()


def json_valid(output: str) -> bool:
    return _parse(output)[0]


def json_schema(output: str, schema: dict[str, Any]) -> bool:
    import jsonschema

    ok, value = _parse(output)
    if not ok:
        return False
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def run_checks(
    checks: Sequence[str], *, output: str, reference: str, stopped_on_eos: bool, schema: dict[str, Any] | None
) -> dict[str, bool]:
    results: dict[str, bool] = {}
    for name in checks:
        if name == "exact_match":
            results[name] = exact_match(output, reference)
        elif name == "json_valid":
            results[name] = json_valid(output)
        elif name == "json_schema":
            results[name] = json_schema(output, schema or {})
        elif name == "stops_on_eos":
            results[name] = stopped_on_eos
        else:
            raise ValueError(f"unknown check {name!r}")
    return results
