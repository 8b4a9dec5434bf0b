"""Schemathesis against a real gateway (Redis, an Ollama double): every operation of the schema, through
every phase (the schema's examples, coverage of its bounds, random cases, stateful sequences through its
links), with the contract's checks: no server error, and every response's status code, content type and
body as the schema says. Deterministic (the same cases every run) and bounded, so it takes well under a
minute; `python -m bench.fuzz` is the long run. A failure prints each case's reproduction (curl)."""

from __future__ import annotations

import httpx

from testkit.api_fuzz import ADMIN_KEY, CHECKS, fuzz_stack, run_schemathesis

MAX_EXAMPLES = 10
SEED = 1


def test_no_input_breaks_the_contract():
    with fuzz_stack() as url:
        schema = httpx.get(f"{url}/openapi.json", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
        operations = sum(len(ops) for ops in schema["paths"].values())
        result = run_schemathesis(url, max_examples=MAX_EXAMPLES, seed=SEED)
    assert result.ok, f"schemathesis found failures (checks: {', '.join(CHECKS)}):\n{result.output}"
    assert result.operations == operations, result.output  # every operation, none skipped
    assert "Stateful" in result.output and result.cases and result.cases > 1000, result.output
    print(f"fuzz: {operations} operations, {result.cases} cases, {result.seconds:.0f} s")
