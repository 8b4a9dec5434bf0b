"""End to end on the real model: the shipped example task (trained once per session on SmolLM2, see
tests/trainer/conftest.py) is pushed twice, as order-json:v1 and order-json:v2, onto the route
`order-json` through the gateway's admin API: v1 creates the route, v2 joins as a 10 % canary with the
step plan [50, 100]. Users send traffic with the `openai` SDK until the gateway's guard has stepped v2
to 50 % and promoted it to 100 %; the route's history shows both steps.

Ollama cannot run here, so its two halves are played separately: the Ollama double receives the pushes
(blobs, create, tags), and llama.cpp serves the pushed GGUF, one `llama_cpp.server` per version with the
alias NAME:vN, as the gateway's backends. Both servers exist before the pushes (the gateway's backends
are fixed at its start), so the gateway already lists each version when deploy asks for it.

v2 is the same trained weights as v1, pushed again as a new version (training twice would double the
test's minutes without changing what it shows: how a new version is rolled out, not whether it is better).
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

import httpx
import openai
import pytest

from testkit.llama import start_llama_server
from testkit.ollama import OllamaDoubleControl, running_ollama_double
from tests.support.gateway import ADMIN_KEY, running_gateway
from trainer.config import DeployConfig
from trainer.manifest import list_versions
from trainer.stages import push_stage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
ROUTE = "order-json"
STEP_AFTER = 4
MAX_REQUESTS = 400


def _deploy_config(cfg, tmp_path, double_url: str, gateway_url: str):
    """The trained run, pushing into a fresh output folder (so versions start at v1) with a deploy section."""
    out = tmp_path / "out"
    for rel in (
        "data/prepare_report.json",
        "train_summary.json",
        "eval/report.json",
        "eval/summary.md",
        "export/export.json",
    ):
        if (cfg.output_dir / rel).exists():
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(cfg.output_dir / rel, out / rel)
    for entry in json.loads((cfg.output_dir / "export" / "export.json").read_text())["files"].values():
        shutil.copy(cfg.output_dir / "export" / entry["file"], out / "export" / entry["file"])
    deploy = {
        "route": ROUTE,
        "canary_percent": 10,
        "steps": [50, 100],
        "step_after_requests": STEP_AFTER,
        # A small sample so the guard judges the canary here; TTFT on two shared cores is noisy.
        "guard": {"min_requests": STEP_AFTER, "max_ttft_p95_ratio": 10.0},
        "gateway_url": gateway_url,
        "admin_key_env": "E2E_GATEWAY_ADMIN_KEY",
        "model_wait_s": 60,
    }
    return cfg.model_copy(
        update={
            "output_dir": out,
            "ollama": cfg.ollama.model_copy(update={"host": double_url, "retry_backoff_s": 0}),
            "deploy": DeployConfig.model_validate(deploy),
        }
    )


def _route(gateway_url: str) -> dict:
    response = httpx.get(f"{gateway_url}/admin/routes/{ROUTE}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    response.raise_for_status()
    return response.json()


def test_v2_goes_out_as_a_canary_and_its_plan_promotes_it(order_json_run, tmp_path, monkeypatch):
    cfg, results = order_json_run
    served = cfg.output_dir / "export" / results["export"]["files"][cfg.export.serve]["file"]
    servers = [start_llama_server(served, alias=f"{cfg.ollama.model}:v{n}", n_ctx=512) for n in (1, 2)]
    try:
        with running_ollama_double() as double, running_gateway([("openai", s.url) for s in servers]) as gateway:
            monkeypatch.setenv("E2E_GATEWAY_ADMIN_KEY", ADMIN_KEY)
            run = _deploy_config(cfg, tmp_path, double.url, gateway.url)
            first, second = push_stage(run), push_stage(run)
            _check_pushes(first, second, double.url, run)
            answers = _traffic_until_promoted(gateway.url, cfg)
            history = httpx.get(
                f"{gateway.url}/admin/routes/{ROUTE}/history", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ).json()["history"]
    finally:
        for server in servers:
            server.stop()
    _check_history(history)
    by_variant = Counter(model for model, _ in answers)
    assert set(by_variant) == {"order-json:v1", "order-json:v2"}, by_variant
    for model, text in answers:  # llama.cpp served the tuned model: its answers are the task's JSON orders
        assert json.loads(text)["product"], (model, text)
    print(f"\n{len(answers)} requests until promotion; served by {dict(by_variant)}")


def _check_pushes(first: dict, second: dict, double_url: str, run) -> None:
    assert first["deploy"]["action"] == "created" and first["deploy"]["model"] == "order-json:v1"
    assert [(v["model"], v["weight"]) for v in first["deploy"]["variants"]] == [("order-json:v1", 100)]
    assert second["deploy"]["action"] == "canary" and second["deploy"]["stable"] == "order-json:v1"
    assert [(v["model"], v["weight"]) for v in second["deploy"]["variants"]] == [
        ("order-json:v1", 90),
        ("order-json:v2", 10),
    ]
    assert second["deploy"]["guard"]["steps"] == [50, 100]
    assert second["deploy"]["guard"]["step_after_requests"] == STEP_AFTER
    created = OllamaDoubleControl(double_url).stats()["created"]
    assert {"order-json:v1", "order-json:v2"} <= set(created) and "order-json:latest" not in created
    assert [m["deploy"]["action"] for m in list_versions(run.output_dir)] == ["created", "canary"]


def _traffic_until_promoted(gateway_url: str, cfg) -> list[tuple[str, str]]:
    """Requests from distinct users (each sticks to a variant) until v2 leads the route at 100 %."""
    client = openai.OpenAI(base_url=gateway_url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
    answers: list[tuple[str, str]] = []
    started = time.monotonic()
    for n in range(MAX_REQUESTS):
        raw = client.chat.completions.with_raw_response.create(
            model=ROUTE,
            user=f"shopper-{n}",
            temperature=0,
            max_tokens=cfg.evaluation.max_new_tokens,
            messages=[
                {"role": "system", "content": cfg.data.system_prompt},
                {"role": "user", "content": f"Please send {n % 5 + 1} blue mugs, size M."},
            ],
        )
        answer = raw.parse()
        assert raw.headers["X-Model-Variant"] == answer.model
        answers.append((answer.model, answer.choices[0].message.content))
        variants = _route(gateway_url)["variants"]
        if variants[0]["model"] == "order-json:v2" and variants[0]["weight"] == 100:
            return answers
    raise AssertionError(
        f"v2 not promoted after {MAX_REQUESTS} requests ({time.monotonic() - started:.0f}s); "
        f"route now {_route(gateway_url)}"
    )


def _check_history(history: list[dict]) -> None:
    """Newest first: the guard's promotion to 100 %, its step to 50 %, then the trainer's two changes."""
    changes = [(h["why"], h["who"], {v["model"]: v["weight"] for v in h["to"]["variants"]}) for h in history]
    assert [why for why, _, _ in changes] == ["promote", "step", "manual", "manual"], changes
    promote, step, canary, created = changes
    assert promote[1] == step[1] == "guard"
    assert promote[2]["order-json:v2"] == 100 and history[0]["to"]["variants"][0]["model"] == "order-json:v2"
    assert step[2] == {"order-json:v1": 50, "order-json:v2": 50}
    assert canary[2] == {"order-json:v1": 90, "order-json:v2": 10}
    assert created[2] == {"order-json:v1": 100}
    assert history[1]["reason"]["canary_requests"] >= STEP_AFTER
