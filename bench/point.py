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
    "plain": Scenario(name="plain", stream=False, unique=True,
                      description="non-streamed completion, unique prompt (cache miss + store)"),
    "stream": Scenario(name="stream", stream=True, unique=True,
                       description="streamed completion, unique prompt; TTFT, chunk gaps, chunk count"),
    "cache_hit": Scenario(name="cache_hit", stream=False, unique=False,
                          description="non-streamed completion, the same prompt every time (cache hit)"),
}


def chat_body(model: str, *, stream: bool, prompt: str) -> str:
    """An OpenAI chat body; Ollama's /api/chat accepts the same fields (stream set explicitly).

    temperature 0 makes every request cacheable, so the gateway takes its full path (cache
    lookup, then store on a miss) as LiteLLM with its cache on does for every request."""
    return json.dumps({"model": model, "stream": stream, "max_tokens": 16, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]})


def kind_for(scenario: Scenario, target: Target, model: str) -> RequestKind:
    prompt = "Say something short. {n}" if scenario.unique else "Say something short."
    return RequestKind(name=scenario.name, path=target.chat_path, stream=scenario.stream,
                       headers=target.headers, body=chat_body(model, stream=scenario.stream, prompt=prompt))


def run_loadgen(spec: dict[str, Any], workdir: Path, tag: str) -> dict[str, Any]:
    """Run the load generator as a separate process and return its result file's content."""
    spec_path, out_path = workdir / f"{tag}.spec.json", workdir / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-m", "bench.loadgen", str(spec_path), str(out_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed for {tag}: {proc.stderr[-2000:]}")
    result = json.loads(out_path.read_text())
    out_path.unlink()  # per-request columns are big; the summary keeps what matters
    return result


def backend_calls(mock_url: str) -> int:
    """Inference calls the mock has received so far."""
    return int(httpx.get(f"{mock_url}/_stats", timeout=10).json()["inference_calls"])


WARMUP_PER_CLIENT = 10


def measure(*, target: Target, kinds: list[RequestKind], scenario: str, concurrency: int, requests: int,
            warmup: int, workdir: Path, mock_url: str, extra_pids: dict[str, int] | None = None) -> PointSummary:
    """Send the load; the CPU of the target's processes (and extra ones, e.g. the mock) is
    read by the load generator at the edges of its measured phase (warm-up excluded).

    The warm-up is at least WARMUP_PER_CLIENT requests per client: with fewer, the measured window
    still held the start-up transient (every client and backend connection being opened, and the
    first waves of all clients firing together), the first few hundred requests at 50 clients."""
    warmup = max(warmup, WARMUP_PER_CLIENT * concurrency)
    spec = {"host": "127.0.0.1", "port": target.port, "concurrency": concurrency, "requests": requests,
            "warmup": warmup, "kinds": [asdict(k) for k in kinds],
            "watch_pids": {**target.pids(), **(extra_pids or {})}}
    calls_before = backend_calls(mock_url)
    result = run_loadgen(spec, workdir, f"{scenario}-{target.name}-c{concurrency}")
    summary = summarize(scenario=scenario, target=target.name, concurrency=concurrency, result=result,
                        cpu=result["server_cpu_s"])
    summary.backend_calls_per_request = (backend_calls(mock_url) - calls_before) / (requests + warmup)
    return summary
