"""Client JSON schemas within a budget: refused before any work when their expansion, depth or size is too
large, answers checked against the accepted ones within a time budget (patterns included)."""

from __future__ import annotations

import asyncio
import copy
import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.pipeline.verdicts import Verdicts
from gateway.protocol.schema_budget import MAX_DEPTH, MAX_NODES, SchemaTooComplex, check_schema_budget
from gateway.protocol.structured import CheckOverBudget, check_answer


def bomb(levels: int, fan_out: int = 2) -> dict[str, Any]:
    defs: dict[str, Any] = {f"l{i}": {"allOf": [{"$ref": f"#/$defs/l{i + 1}"}] * fan_out} for i in range(levels)}
    defs[f"l{levels}"] = {"type": "object"}
    return {"$ref": "#/$defs/l0", "$defs": defs}


def wide(width: int, depth: int) -> dict[str, Any]:
    """An object `depth` levels deep, `width` properties at each level (each its own dict, as parsed JSON is)."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {f"p{i}": copy.deepcopy(schema) for i in range(width)}}
    return schema


def as_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}


@pytest.mark.parametrize(
    ("schema", "limit"),
    [
        (bomb(19), "levels"),
        (bomb(6, fan_out=6), "subschemas"),
        (wide(2000, 1), "properties"),
        (wide(1, 20), "levels"),
        ({"enum": list(range(2000))}, "enum"),
    ],
)
def test_a_schema_over_a_limit_is_refused_at_once_naming_it(schema: dict[str, Any], limit: str) -> None:
    started = time.perf_counter()
    with pytest.raises(SchemaTooComplex, match=limit):
        check_schema_budget(schema, what="json_schema.schema")
    assert time.perf_counter() - started < 0.5


def test_recursive_and_large_legitimate_schemas_are_accepted() -> None:
    recursive = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}},
    }
    check_schema_budget(recursive, what="s")
    check_schema_budget(wide(30, 2), what="s")  # 930 properties, two levels of objects
    check_schema_budget(bomb(MAX_DEPTH // 2 - 1), what="s")  # a few levels of references are fine
    assert MAX_NODES >= 1000


def test_a_check_that_runs_out_of_time_stops_and_gives_no_verdict() -> None:
    backtracking = as_format({"type": "string", "pattern": "^(a|a)+$"})  # exponential for Python's re
    started = time.perf_counter()
    with pytest.raises(CheckOverBudget):
        check_answer(backtracking, '"' + "a" * 40 + 'b"', budget_s=0.1)
    assert time.perf_counter() - started < 1.0
    with pytest.raises(CheckOverBudget):
        check_answer(as_format(bomb(22)), '{"a": 1}', budget_s=0.1)  # never accepted; the check alone is bounded


@pytest.fixture
def unjudged() -> list[str]:
    return []


@pytest.fixture
def verdicts(unjudged: list[str]) -> Iterator[Verdicts]:
    judge = Verdicts(budget_s=0.05, waiting=2, on_unjudged=unjudged.append)
    yield judge
    judge.close()


def test_verdicts_come_from_a_child_process_and_a_check_over_budget_gets_none(
    verdicts: Verdicts, unjudged: list[str]
) -> None:
    checked = as_format({"type": "string", "pattern": "^a+b$"})
    assert asyncio.run(verdicts.verdict(checked, '"aab"')) == "valid"
    assert asyncio.run(verdicts.verdict(checked, '"aa"')) == "invalid"
    assert multiprocessing.active_children(), "no checking process"
    backtracking = as_format({"type": "string", "pattern": "^(a|a)+$"})
    assert asyncio.run(verdicts.verdict(backtracking, '"' + "a" * 40 + 'b"')) is None
    assert unjudged == ["time"]
    broken = as_format({"type": "no-such-type"})  # the caller's mistake: no verdict, and not counted
    assert asyncio.run(verdicts.verdict(broken, "{}")) is None and unjudged == ["time"]


def test_checks_past_the_waiting_limit_get_no_verdict(verdicts: Verdicts, unjudged: list[str]) -> None:
    slow = as_format(bomb(22))  # each check runs its whole budget

    async def burst() -> list[str | None]:
        return await asyncio.gather(*(verdicts.verdict(slow, '{"a": 1}') for _ in range(5)))

    assert asyncio.run(burst()) == [None] * 5
    assert sorted(unjudged) == ["queue"] * 3 + ["time"] * 2


def test_a_dead_checking_process_is_replaced(verdicts: Verdicts, unjudged: list[str]) -> None:
    checked = as_format({"type": "object"})
    assert asyncio.run(verdicts.verdict(checked, "{}")) == "valid"
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)
    assert asyncio.run(verdicts.verdict(checked, "{}")) is None and unjudged == ["failed"]
    assert asyncio.run(verdicts.verdict(checked, "{}")) == "valid"
