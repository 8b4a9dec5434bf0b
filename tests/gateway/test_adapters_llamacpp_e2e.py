"""Two LoRA adapters of one base model in one llama-server, chosen per request by the gateway.

The trainer trains two adapters on CPU (the example order task and the review task) on SmolLM2-135M,
exports each adapter GGUF and a merged q8_0 model, and `push` (target llamacpp) puts the adapters into
a shared folder and the gateway's registry. One llama-server holds the Q4_1 base with both adapters;
through the gateway and the `openai` SDK, `orders` and `reviews` are asked their held-out rows,
interleaved and concurrently, and each must score like its own merged model (within 5 points) asked
the same way: the same interleaved requests, as many at once, against the two merged-model servers.
Printed: the scores (4 at once and one at a time), RSS of the one server against the two merged
servers, and TTFT with the adapter alternating per request against a fixed adapter (recorded in
bench/README.md).

Why both paths must be asked the same way: llama-server batches only slots whose LoRA sets are equal
(tools/server/server-context.cpp, `can_batch_with` -> `are_lora_equal`), and ggml's CPU matrix
products take another kernel for a batch of one row than for two or more (llamafile's sgemm "only
for prompt processing", n >= 2; ggml's vec_dot otherwise), which rounds differently. So an answer's
greedy near-ties depend on which requests shared its batches. Scoring the merged model with 4 of its
own requests in flight against adapters sharing one server with the other task (about 2 per adapter)
compared two different batchings, not the two ways of serving the weights.

Training is the slow part (minutes on two cores); SLM_ADAPTER_RUNS=DIR keeps the trained runs in DIR
and reuses them (the same config gives the same adapter), which CI does not set.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from testkit.llama import SMOLLM2_ALIAS, smollm2_gguf
from testkit.processes import free_port, wait_until
from tests.support.gateway import ADMIN_KEY, running_gateway
from tests.support.llama_cpp_server import rss_bytes, start_llama_cpp
from trainer import converter
from trainer.checks import exact_match
from trainer.config import RunConfig, load_config
from trainer.data import read_prepared
from trainer.stages import evaluate_stage, export_stage, prepare_stage, push_stage, train_stage

# Two adapters trained on two shared CPU cores take ~35 minutes, more than CI's whole budget allows
# beside the rest: this comparison runs on request (`SLM_ADAPTER_E2E=1 pytest THIS_FILE -s`), and its
# numbers are in bench/README.md ("LoRA adapters"). CI runs the driver against a real llama-server with
# two LoRA files in tests/gateway/test_adapters_llamacpp.py.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(5400),
    pytest.mark.skipif(
        not os.environ.get("SLM_ADAPTER_E2E"),
        reason="trains two adapters on CPU (~35 min): set SLM_ADAPTER_E2E=1 to run it",
    ),
]
EXAMPLES = Path(__file__).resolve().parents[2] / "trainer" / "examples"
TASKS = {"orders": "order_json", "reviews": "review_json"}
HELD_OUT = 32  # every held-out row (eval_fraction 0.1 of 320): one differing answer is 3 points
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
WORKERS = 4  # requests at once, as the adapters and as the merged models (see the docstring)
MODES = {"4 at once": WORKERS, "one at a time": 1}
# Every answer from the model: the gateway's response cache would answer a repeated deterministic request.
NO_CACHE = {"X-Gateway-Cache": "off"}


def _config(task: str, runs: Path, adapters_dir: Path, gateway_url: str) -> RunConfig:
    return load_config(
        EXAMPLES / TASKS[task] / "config.yaml",
        {
            "output_dir": str(runs / task),
            "export.quantizations": ["q8_0"],
            "export.serve": "q8_0",
            "evaluation.max_examples": 8,
            "push.targets": ["llamacpp"],
            "push.adapters": {
                "name": task,
                "base": SMOLLM2_ALIAS,
                "dir": str(adapters_dir),
                "gateway_url": gateway_url,
            },
        },
    )


def _trained(cfg: RunConfig) -> None:
    if (cfg.output_dir / "export" / "export.json").exists() and (cfg.output_dir / "eval" / "report.json").exists():
        return  # SLM_ADAPTER_RUNS: trained before with this config
    prepare_stage(cfg)
    train_stage(cfg)
    evaluate_stage(cfg)
    export_stage(cfg)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[dict]:
    converter.ensure()
    runs = (
        Path(os.environ["SLM_ADAPTER_RUNS"]) if os.environ.get("SLM_ADAPTER_RUNS") else tmp_path_factory.mktemp("runs")
    )
    adapters_dir = tmp_path_factory.mktemp("adapters")
    llama_port = free_port()
    with (
        pytest.MonkeyPatch.context() as env,
        running_gateway(
            [{"kind": "llamacpp", "url": f"http://127.0.0.1:{llama_port}", "name": "llamacpp"}],
            env={"GATEWAY_TOTAL_TIMEOUT_S": "120", "GATEWAY_FIRST_TOKEN_TIMEOUT_S": "60"},
        ) as gateway,
    ):
        env.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)  # what push reads to register the adapters
        cfgs = {task: _config(task, runs, adapters_dir, gateway.url) for task in TASKS}
        for cfg in cfgs.values():
            _trained(cfg)
            push_stage(cfg)
        loras = sorted(adapters_dir.glob("*.gguf"))
        assert len(loras) == 2
        server = start_llama_cpp(smollm2_gguf(), alias=SMOLLM2_ALIAS, loras=loras, port=llama_port, parallel=4)
        try:
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
            wait_until(
                lambda: set(TASKS) <= {m.id for m in client.models.list().data},
                timeout=30,
                what="the gateway routes both adapters",
            )
            yield {"gateway": gateway, "client": client, "server": server, "cfgs": cfgs}
        finally:
            server.stop()


def _rows(cfg: RunConfig) -> list[list[dict]]:
    rows = read_prepared(cfg.output_dir / "data" / "eval.jsonl")[:HELD_OUT]
    assert len(rows) == HELD_OUT
    return rows


def _answer(client: openai.OpenAI, model: str, messages: list[dict], max_tokens: int) -> str:
    answer = client.chat.completions.create(
        model=model, messages=messages[:-1], temperature=0, max_tokens=max_tokens, extra_headers=NO_CACHE
    )
    assert answer.model == model
    return answer.choices[0].message.content or ""


def _score(answers: list[str], rows: list[list[dict]]) -> float:
    return sum(exact_match(a, r[-1]["content"]) for a, r in zip(answers, rows, strict=True)) / len(rows)


def _answers(
    clients: dict[str, openai.OpenAI], rows: dict[str, list], cfgs: dict[str, RunConfig], workers: int
) -> dict[str, list[str]]:
    """Every held-out row of both tasks, interleaved (orders, reviews, orders, ...), `workers` at a time;
    `clients[task]` answers `task` (the gateway for both, or that task's merged-model server)."""
    jobs = [(task, i) for i in range(HELD_OUT) for task in TASKS]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        answers = list(
            pool.map(
                lambda job: _answer(
                    clients[job[0]], job[0], rows[job[0]][job[1]], cfgs[job[0]].evaluation.max_new_tokens
                ),
                jobs,
            )
        )
    return {task: [a for (t, _), a in zip(jobs, answers, strict=False) if t == task] for task in TASKS}


def test_each_route_scores_like_its_merged_model_interleaved_and_concurrent(stack):
    client, cfgs = stack["client"], stack["cfgs"]
    rows = {task: _rows(cfg) for task, cfg in cfgs.items()}
    adapter = {mode: _answers({task: client for task in TASKS}, rows, cfgs, n) for mode, n in MODES.items()}

    servers, load_s = {}, []
    try:
        for task, cfg in cfgs.items():
            began = time.perf_counter()  # what switching costs where each variant is its own model (Ollama)
            servers[task] = start_llama_cpp(cfg.output_dir / "export" / "model-q8_0.gguf", alias=task, parallel=4)
            load_s.append(time.perf_counter() - began)
        direct = {
            task: openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
            for task, server in servers.items()
        }
        merged = {mode: _answers(direct, rows, cfgs, n) for mode, n in MODES.items()}  # asked the same way
        merged_rss = sum(rss_bytes(server) for server in servers.values())
    finally:
        for server in servers.values():
            server.stop()
    adapter_rss = rss_bytes(stack["server"])

    def scores(answers: dict[str, dict[str, list[str]]]) -> dict[str, dict[str, float]]:
        return {mode: {task: _score(answers[mode][task], rows[task]) for task in TASKS} for mode in MODES}

    def agree(a: dict[str, list[str]], b: dict[str, list[str]]) -> dict[str, int]:
        return {task: sum(x == y for x, y in zip(a[task], b[task], strict=False)) for task in TASKS}

    adapter_scores, merged_scores = scores(adapter), scores(merged)
    first, second = MODES
    print(
        f"\nexact match on {HELD_OUT} held-out rows each, both tasks interleaved: adapters through the gateway "
        f"{adapter_scores}, merged q8_0 models {merged_scores}; answers equal to the merged model's "
        f"{ {mode: agree(adapter[mode], merged[mode]) for mode in MODES} }; answers equal {first} and "
        f"{second}: adapters {agree(adapter[first], adapter[second])}, merged {agree(merged[first], merged[second])}"
    )
    print(
        f"RSS: one llama-server, Q4_1 base + 2 f16 adapters: {adapter_rss / 2**20:.0f} MiB; "
        f"two llama-servers with merged q8_0 models: {merged_rss / 2**20:.0f} MiB; "
        f"starting a merged-model server took {', '.join(f'{s:.1f}' for s in load_s)} s"
    )
    for mode in MODES:
        for task in TASKS:
            assert abs(adapter_scores[mode][task] - merged_scores[mode][task]) <= 0.05, (mode, task)
            assert adapter_scores[mode][task] >= 0.5, f"{task} does not answer its task ({mode})"
    assert adapter_rss < merged_rss


def test_the_base_model_answers_without_any_adapter(stack):
    """With every adapter at scale 0 the base model answers: not the tuned JSON of either task."""
    client, cfgs = stack["client"], stack["cfgs"]
    rows = _rows(cfgs["orders"])[:4]
    base = [_answer(client, SMOLLM2_ALIAS, r, 40) for r in rows]
    tuned = [_answer(client, "orders", r, 40) for r in rows]
    assert _score(tuned, rows) > _score(base, rows)
    assert base != tuned


def _ttft(client: openai.OpenAI, model: str, messages: list[dict]) -> float:
    began = time.perf_counter()
    stream = client.chat.completions.create(
        model=model, messages=messages[:-1], temperature=0, max_tokens=8, stream=True, extra_headers=NO_CACHE
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            elapsed = time.perf_counter() - began
            stream.close()
            return elapsed
    raise AssertionError(f"{model} streamed no content")


def test_switching_adapter_per_request_costs_little_time_to_first_token(stack):
    client, cfgs = stack["client"], stack["cfgs"]
    rows = {task: _rows(cfg) for task, cfg in cfgs.items()}
    n = 8
    fixed = [_ttft(client, "orders", rows["orders"][i % HELD_OUT]) for i in range(n)]
    alternating = [_ttft(client, task, rows[task][i % HELD_OUT]) for i in range(n // 2) for task in TASKS]
    fixed_ms, alternating_ms = statistics.median(fixed) * 1000, statistics.median(alternating) * 1000
    print(
        f"\nTTFT median over {n} streamed requests through the gateway: fixed adapter {fixed_ms:.0f} ms, "
        f"adapter alternating per request {alternating_ms:.0f} ms"
    )
    assert alternating_ms < 2 * fixed_ms + 250  # no reload per switch: the same order of magnitude


def test_the_llama_server_lists_both_adapters_and_the_gateway_maps_them(stack):
    listing = httpx.get(stack["server"].url + "/lora-adapters", timeout=10).json()
    assert sorted(p["id"] for p in listing) == [0, 1]
    registry = httpx.get(stack["gateway"].url + "/admin/adapters", headers=ADMIN, timeout=10).json()["data"]
    names = {a["name"] for a in registry}
    assert {"orders", "reviews"} <= names
    assert all(any(n.startswith(f"{task}:v") for n in names) for task in TASKS)  # NAME:vN too
    assert all(a["base"] == SMOLLM2_ALIAS for a in registry)
