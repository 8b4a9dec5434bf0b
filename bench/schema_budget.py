"""What a client-supplied JSON schema can cost the gateway: the largest schemas the budget accepts, and a
worker's responsiveness while refused and accepted schemas arrive in a loop.

Part one (this checkout's gateway, in process) checks an answer against each of the most expensive
schemas the budget accepts, one per limit: references expanded up to the subschema limit, properties up
to the property limit, a schema near the byte limit, and a pattern that backtracks (stopped by the
time budget). It reports each schema's first check (the validator built) and the median of the next.

Part two runs a gateway (this checkout's, or another's with `--gateway-dir`) in production mode in front
of the mock backend, which answers with a document that conforms to the accepted schemas. `/healthz` is
probed in a loop, first idle, then while clients send the reference bomb (refused: 400) and the accepted
large schemas (answered and format-checked) as fast as they are answered. The report gives `/healthz`
latency for both phases, the statuses the clients got, and the gateway's format-check counters.

    python -m bench.schema_budget [--seconds 15] [--senders 4] [--gateway-dir ../other-checkout]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.stack import MockOptions, Target, start_gateway, start_mock

PROBE_EVERY_S = 0.01
PROBE_TIMEOUT_S = 60.0


def ref_bomb(levels: int, fan_out: int = 2) -> dict[str, Any]:
    """`levels` definitions, each an allOf of `fan_out` references to the next: fan_out**levels subschemas."""
    defs: dict[str, Any] = {f"l{i}": {"allOf": [{"$ref": f"#/$defs/l{i + 1}"}] * fan_out} for i in range(levels)}
    defs[f"l{levels}"] = {"type": "object"}
    return {"$ref": "#/$defs/l0", "$defs": defs}


def wide(width: int, depth: int) -> dict[str, Any]:
    """An object `depth` levels deep with `width` properties at each level, string leaves."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    for _ in range(depth):
        node = {"type": "object", "properties": {f"p{i}": copy.deepcopy(schema) for i in range(width)}}
        schema = {**node, "required": list(node["properties"])}
    return schema


def conforming(schema: dict[str, Any]) -> Any:
    """A document that satisfies a `wide` schema."""
    if schema.get("type") == "object":
        return {name: conforming(sub) for name, sub in schema["properties"].items()}
    return "x"


def _accepted(schema: dict[str, Any]) -> bool:
    from gateway.protocol.schema_budget import SchemaTooComplex, check_schema_budget

    try:
        check_schema_budget(schema, what="schema")
    except SchemaTooComplex:
        return False
    return True


def accepted_schemas() -> dict[str, tuple[dict[str, Any], str]]:
    """The most expensive schema under each limit, with the answer it is checked against."""
    from gateway.protocol import schema_budget as budget

    levels, fan_out = max(  # the reference chain the budget accepts that expands to the most leaves
        ((lv, f) for lv in range(1, budget.MAX_DEPTH) for f in range(2, 64) if _accepted(ref_bomb(lv, f))),
        key=lambda shape: shape[1] ** shape[0],
    )
    width = 1  # two levels of objects, as many properties as allowed
    while (width + 1) + (width + 1) ** 2 <= budget.MAX_PROPERTIES:
        width += 1
    broad = wide(width, 2)
    enum_count = budget.MAX_ENUM_VALUES  # each value as long as the byte limit allows ('"', 6 digits, '", ')
    value = "v" * ((budget.MAX_SCHEMA_BYTES - 1000) // enum_count - 12)
    big = {"type": "string", "enum": [f"{value}{i:06d}" for i in range(enum_count)]}
    return {
        f"references: {levels} levels of allOf x{fan_out} ({fan_out**levels} leaves)": (
            ref_bomb(levels, fan_out),
            json.dumps(conforming(broad)),
        ),
        f"properties: {width} x {width} objects ({width + width * width} properties)": (
            broad,
            json.dumps(conforming(broad)),
        ),
        f"bytes: an enum of {enum_count} strings": (big, json.dumps(big["enum"][-1])),
        "a backtracking pattern ^(a|a)+$ on 40 characters": (
            {"type": "string", "pattern": "^(a|a)+$"},
            json.dumps("a" * 40 + "b"),
        ),
    }


def as_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "bench", "schema": schema}}


def direct_checks(rounds: int = 20) -> list[dict[str, Any]]:
    """Each accepted schema: the budget walk, the first check and the median of the next `rounds`."""
    from gateway.protocol.schema_budget import check_schema_budget
    from gateway.protocol.structured import CheckOverBudget, check_answer

    rows = []
    for name, (schema, answer) in accepted_schemas().items():
        unseen = {**schema, "title": f"bench {time.monotonic_ns()}"}  # not a schema the budget remembers
        started = time.perf_counter()
        check_schema_budget(unseen, what="schema")  # raises if it is not accepted after all
        budget_s = time.perf_counter() - started
        times, verdict = [], None
        for _ in range(rounds + 1):
            started = time.perf_counter()
            try:
                verdict = check_answer(as_format(schema), answer)
            except CheckOverBudget:
                verdict = "over budget (no verdict)"
            times.append(time.perf_counter() - started)
        rows.append(
            {
                "schema": name,
                "bytes": len(json.dumps(schema)),
                "budget_walk_ms": budget_s * 1000,
                "first_check_ms": times[0] * 1000,
                "check_p50_ms": statistics.median(times[1:]) * 1000,
                "verdict": verdict,
            }
        )
    return rows


async def probe(client: httpx.AsyncClient, until: float) -> list[float]:
    latencies = []
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            r = await client.get("/healthz", timeout=PROBE_TIMEOUT_S)
            r.raise_for_status()
        except httpx.TimeoutException:  # counted at the timeout: the worker did not answer at all
            pass
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(PROBE_EVERY_S)
    return latencies


async def send(
    client: httpx.AsyncClient, target: Target, schema: dict[str, Any] | None, until: float, seen: Counter
) -> None:
    """Chat requests one after another until `until`, asking for `schema` (None: plain text)."""
    n = 0
    while time.monotonic() < until:
        n += 1
        body: dict[str, Any] = {
            "model": "bench-model",
            "messages": [{"role": "user", "content": f"answer in JSON ({id(schema)}-{n})"}],
            "temperature": 0.7,
        }
        if schema is not None:
            body["response_format"] = as_format(schema)
        try:
            r = await client.post(target.chat_path, json=body, headers=target.headers, timeout=PROBE_TIMEOUT_S)
            seen[r.status_code] += 1
        except httpx.TimeoutException:
            seen["timeout"] += 1


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "probes": len(ordered),
        "p50_ms": ordered[len(ordered) // 2] * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max_ms": ordered[-1] * 1000,
    }


def format_counters(metrics: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith(("gateway_format_compliance_total", "gateway_format_checks_unjudged_total")):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


async def loaded_phase(
    client: httpx.AsyncClient, target: Target, schemas: list[dict[str, Any] | None], seconds: float
) -> tuple[list[float], dict[str, int], float]:
    """/healthz probed while one sender per entry of `schemas` sends requests; the probes, the statuses the
    senders got and the phase's length."""
    until = time.monotonic() + seconds
    seen: Counter = Counter()
    started = time.monotonic()
    probes, *_ = await asyncio.gather(probe(client, until), *(send(client, target, s, until, seen) for s in schemas))
    return probes, dict(seen), time.monotonic() - started


async def responsiveness(target: Target, *, seconds: float, senders: int, bomb_levels: int) -> dict[str, Any]:
    accepted = [schema for schema, _ in list(accepted_schemas().values())[:2]]
    bomb = ref_bomb(bomb_levels)
    phases: dict[str, list[dict[str, Any] | None]] = {
        "plain requests (no schema)": [None] * (2 * senders),
        "refused bomb + accepted large schemas": [bomb] * senders + [accepted[i % 2] for i in range(senders)],
    }
    out: dict[str, Any] = {"phases": {}}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{target.port}") as client:
        out["phases"]["idle"] = {**summary(await probe(client, time.monotonic() + seconds)), "requests": {}}
        for name, schemas in phases.items():
            probes, seen, elapsed = await loaded_phase(client, target, schemas, seconds)
            out["phases"][name] = {**summary(probes), "requests": seen, "rps": sum(seen.values()) / elapsed}
        out["format_counters"] = format_counters((await client.get("/metrics", timeout=300)).text)
    return out


def report(direct: list[dict[str, Any]] | None, live: dict[str, Any], args: argparse.Namespace) -> str:
    lines = ["# Client JSON schemas: cost and responsiveness", ""]
    if direct:
        lines += [
            "## The largest accepted schemas, checked directly",
            "",
            "| schema | bytes | budget walk ms | first check ms | check p50 ms | verdict |",
            "|---|---:|---:|---:|---:|---|",
        ]
        lines += [
            f"| {r['schema']} | {r['bytes']} | {r['budget_walk_ms']:.2f} | {r['first_check_ms']:.1f} "
            f"| {r['check_p50_ms']:.1f} | {r['verdict']} |"
            for r in direct
        ]
        lines.append("")
    where = args.gateway_dir or "this checkout"
    lines += [
        f"## /healthz while schemas arrive (gateway: {where}; {2 * args.senders} senders, {args.seconds:.0f} s a "
        f"phase; the bomb: {args.bomb_levels} levels)",
        "",
        "| phase | probes | p50 ms | p99 ms | max ms | requests/s | statuses |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for phase, s in live["phases"].items():
        lines.append(
            f"| {phase} | {s['probes']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['max_ms']:.1f} "
            f"| {s.get('rps', 0):.0f} | {json.dumps(s['requests'])} |"
        )
    lines += ["", "Format counters after the run:", ""]
    lines += [f"- `{name}` {value:.0f}" for name, value in sorted(live["format_counters"].items())] or ["- (none)"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="length of each phase (idle, loaded)")
    p.add_argument("--senders", type=int, default=4, help="concurrent clients per kind of schema")
    p.add_argument("--bomb-levels", type=int, default=19, help="levels of the refused reference bomb")
    p.add_argument("--gateway-dir", type=Path, default=None, help="run another checkout's gateway")
    p.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = p.parse_args(argv)
    direct = direct_checks() if args.gateway_dir is None else None
    _, broad_answer = list(accepted_schemas().values())[1]
    with ExitStack() as stack:
        mock = start_mock(stack, MockOptions(content=broad_answer, plain_delay_ms=0))
        target = start_gateway(stack, mock, source_dir=args.gateway_dir)
        live = asyncio.run(
            responsiveness(target, seconds=args.seconds, senders=args.senders, bomb_levels=args.bomb_levels)
        )
    text = report(direct, live, args)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
