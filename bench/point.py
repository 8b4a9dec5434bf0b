"""One measured point: a scenario at a concurrency against a target, load from its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.loadgen import RequestKind
from bench.stack import Target
from bench.stats import PointSummary, summarize


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A named request shape. `unique` puts a fresh number in every prompt (no cache hits)."""

    name: str
    stream: bool
    unique: bool
    description: str


SCENARIOS = {
    "plain": Scenario(
        name="plain",
        stream=False,
        unique=True,
        description="non-streamed completion, unique prompt (cache miss + store)",
    ),
    "stream": Scenario(
        name="stream",
        stream=True,
        unique=True,
        description="streamed completion, unique prompt; TTFT, chunk gaps, chunk count",
    ),
    "cache_hit": Scenario(
        name="cache_hit",
        stream=False,
        unique=False,
        description="non-streamed completion, the same prompt every time (cache hit)",
    ),
}


def chat_body(model: str, *, stream: bool, prompt: str) -> str:
    """An OpenAI chat body; Ollama's /api/chat accepts the same fields (stream set explicitly).

    temperature 0 makes every request cacheable, so the gateway takes its full path (cache
    lookup, then store on a miss) as LiteLLM with its cache on does for every request."""
    return json.dumps(
        {
            "model": model,
            "stream": stream,
            "max_tokens": 16,
            "temperature": 0,
            "messages": [{"role": "user", "content": prompt}],
        }
    )


def kind_for(scenario: Scenario, target: Target, model: str) -> RequestKind:
    prompt = "Say something short. {n}" if scenario.unique else "Say something short."
    return RequestKind(
        name=scenario.name,
        path=target.chat_path,
        stream=scenario.stream,
        headers=target.headers,
        body=chat_body(model, stream=scenario.stream, prompt=prompt),
    )


def run_loadgen(spec: dict[str, Any], workdir: Path, tag: str) -> dict[str, Any]:
    """Run the load generator as a separate process and return its result file's content."""
    spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed for {tag}: {proc.stderr[-2000:]}")
    result = json.loads(out_path.read_text())
    out_path.unlink()  # per-request columns are big; the summary keeps what matters
    return result


def backend_calls(mock_url: str) -> int:
    """Inference calls the mock has received so far."""
    return int(httpx.get(f"{mock_url}/_stats", timeout=10).json()["inference_calls"])


WARMUP_PER_CLIENT = 10


def load_spec(
    target: Target,
    kinds: list[RequestKind],
    *,
    concurrency: int,
    requests: int,
    warmup: int,
    extra_pids: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The load generator's input for one run against `target` (whose processes' CPU it reads)."""
    return {
        "host": "127.0.0.1",
        "port": target.port,
        "concurrency": concurrency,
        "requests": requests,
        "warmup": warmup,
        "kinds": [asdict(k) for k in kinds],
        "watch_pids": {**target.pids(), **(extra_pids or {})},
    }


def measure(
    *,
    target: Target,
    kinds: list[RequestKind],
    scenario: str,
    concurrency: int,
    requests: int,
    warmup: int,
    workdir: Path,
    mock_url: str,
    extra_pids: dict[str, int] | None = None,
) -> PointSummary:
    """Send the load; the CPU of the target's processes (and extra ones, e.g. the mock) is
    read by the load generator at the edges of its measured phase (warm-up excluded).

    The warm-up is at least WARMUP_PER_CLIENT requests per client: with fewer, the measured window
    still held the start-up transient (every client and backend connection being opened, and the
    first waves of all clients firing together), the first few hundred requests at 50 clients."""
    warmup = max(warmup, WARMUP_PER_CLIENT * concurrency)
    spec = load_spec(target, kinds, concurrency=concurrency, requests=requests, warmup=warmup, extra_pids=extra_pids)
    calls_before = backend_calls(mock_url)
    result = run_loadgen(spec, workdir, f"{scenario}-{target.name}-c{concurrency}")
    summary = summarize(
        scenario=scenario, target=target.name, concurrency=concurrency, result=result, cpu=result["server_cpu_s"]
    )
    summary.backend_calls_per_request = (backend_calls(mock_url) - calls_before) / (requests + warmup)
    return summary


def merge_results(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Load generator results of several runs against one target as one: per-request columns
    concatenated, wall and CPU seconds (its own and the servers') and transport errors summed."""
    merged: dict[str, Any] = {"wall_s": 0.0, "cpu_s": 0.0, "server_cpu_s": {}, "errors": {}}
    for part in parts:
        merged["wall_s"] += part["wall_s"]
        merged["cpu_s"] += part["cpu_s"]
        for name, secs in part["server_cpu_s"].items():
            merged["server_cpu_s"][name] = merged["server_cpu_s"].get(name, 0.0) + secs
        for name, count in part.get("errors", {}).items():
            merged["errors"][name] = merged["errors"].get(name, 0) + count
        for column, values in part.items():
            if isinstance(values, list):
                merged.setdefault(column, []).extend(values)
    return merged


def measure_alternating(
    *,
    targets: list[Target],
    kinds: dict[str, list[RequestKind]],
    scenario: str,
    concurrency: int,
    requests: int,
    blocks: int,
    warmup: int,
    workdir: Path,
    mock_url: str,
) -> list[PointSummary]:
    """`requests` per target sent in `blocks` blocks, the targets taking turns block by block, so a
    host that speeds up or slows down during the measurement weighs on every target alike (measured
    one after the other, two runs of the same code differed by more than the 1-client effects being
    measured). Every block has its own warm-up of `warmup` requests (10 per client at least)."""
    warmup = max(warmup, WARMUP_PER_CLIENT * concurrency)
    sizes = [requests // blocks + (1 if b < requests % blocks else 0) for b in range(blocks)]
    parts: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    calls: dict[str, int] = {t.name: 0 for t in targets}
    for b, size in enumerate(sizes):
        for target in targets:
            spec = load_spec(target, kinds[target.name], concurrency=concurrency, requests=size, warmup=warmup)
            before = backend_calls(mock_url)
            parts[target.name].append(run_loadgen(spec, workdir, f"{scenario}-{target.name}-c{concurrency}-b{b}"))
            calls[target.name] += backend_calls(mock_url) - before
    summaries = []
    for target in targets:
        result = merge_results(parts[target.name])
        summary = summarize(
            scenario=scenario, target=target.name, concurrency=concurrency, result=result, cpu=result["server_cpu_s"]
        )
        summary.backend_calls_per_request = calls[target.name] / (requests + warmup * blocks)
        for part in parts[target.name]:
            block = summarize(
                scenario=scenario, target=target.name, concurrency=concurrency, result=part, cpu=part["server_cpu_s"]
            )
            summary.block_p50_ms.append(block.p50_ms)
            summary.block_ttft_p50_ms.append(block.ttft_p50_ms)
        summaries.append(summary)
    return summaries
