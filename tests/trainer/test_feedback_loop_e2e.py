"""The whole loop on the real model: production traffic -> corrections -> dataset -> v2 -> v2 beats
v1 through the serving stack -> canary -> promoted.

1. v1 of the example task (SmolLM2-135M-Instruct, LoRA on CPU) is made weak on purpose: it is trained
   only on orders that name no size (`"size": null`), a few steps. It is exported (Q4_K_M GGUF), pushed
   to the Ollama double and deployed: it creates the route `order-json`, with capture on.
2. Users (the `openai` SDK, temperature 0) send orders through the gateway; most name a size, which v1
   never saw. Each answer is checked against the right order: a wrong one gets a `correction` as
   feedback, a right one a thumbs up.
3. `python -m trainer dataset --database-url ...` turns the captured traffic into training rows and a
   held-out set (the newest quarter); `python -m trainer run` trains v2 on v1's rows plus the dataset's,
   exports, pushes v2 and, with `evaluation.baseline: route:order-json`, scores v2 and the deployed v1 on
   the held-out rows through the gateway (greedy, the served GGUFs) before it may deploy v2 as a canary.
4. Users keep sending traffic until the guard has stepped v2 to 50 % and promoted it to 100 %.

Ollama cannot run here: the double receives the pushes and llama.cpp (`llama_cpp.server`, one per
version, alias NAME:vN) serves the pushed GGUFs as the gateway's backends. v2's server starts once the
trainer's export is written, on a port the gateway already has as a backend (its backends are fixed at
start; it discovers the model when the server answers), which is what Ollama serving a pushed model
looks like to the gateway. Run with -s to see v1 vs v2 on the held-out rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from testkit.llama import start_llama_server
from testkit.ollama import running_ollama_double
from testkit.processes import REPO_ROOT, Service, free_port, wait_until
from tests.support.gateway import ADMIN_KEY, running_gateway
from tests.support.metrics import sample
from trainer.checks import exact_match
from trainer.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
EXAMPLE = REPO_ROOT / "trainer" / "examples" / "order_json"
ROUTE = "order-json"
SYSTEM = "Reply with the order as JSON."
V1_ROWS, V1_STEPS = 32, 8  # few rows, no sizes among them, few steps: weak on purpose
TRAFFIC = 48  # three of every four name a size
V2_STEPS = 24
STEP_AFTER = 4
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def _orders() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(rows that name no size, rows that do) of the example's data, in file order."""
    rows = [json.loads(line) for line in (EXAMPLE / "orders.jsonl").read_text().splitlines() if line.strip()]
    plain = [r for r in rows if json.loads(r["completion"])["size"] is None]
    sized = [r for r in rows if json.loads(r["completion"])["size"] is not None]
    return plain, sized


def _config(
    tmp_path: Path, name: str, *, paths: list[Path], out: Path, double: Service, gateway: Service, **changes: Any
) -> Path:
    """The example's config with this run's data, output, Ollama, gateway and `changes` (section -> fields)."""
    raw = yaml.safe_load((EXAMPLE / "config.yaml").read_text())
    raw["data"].update(paths=[str(p) for p in paths], format="auto")
    raw["export"] = {"quantizations": ["q4_k_m"], "serve": "q4_k_m", "adapter_gguf": False}
    raw["ollama"].update(host=double.url, retry_backoff_s=0)
    raw["deploy"] = {
        "route": ROUTE,
        "canary_percent": 10,
        "steps": [50, 100],
        "step_after_requests": STEP_AFTER,
        # A small sample so the guard judges the canary here; TTFT on two shared cores is noisy.
        "guard": {"min_requests": STEP_AFTER, "max_ttft_p95_ratio": 10.0},
        "gateway_url": gateway.url,
        "admin_key_env": "LOOP_GATEWAY_ADMIN_KEY",
        "model_wait_s": 180,
        "timeout_s": 120,
    }
    raw["output_dir"] = str(out)
    for section, fields in changes.items():
        raw[section] = {**raw.get(section, {}), **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class ServeWhenExported(threading.Thread):
    """Starts llama.cpp on a run's served GGUF once its export is written (Ollama's serving half)."""

    def __init__(self, out: Path, alias: str, port: int) -> None:
        super().__init__(daemon=True)
        self.out, self.alias, self.port = out, alias, port
        self.server: Service | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            while not self.done.is_set():
                info = self.out / "export" / "export.json"
                if info.exists():
                    served = json.loads(info.read_text())["served"]
                    self.server = start_llama_server(
                        self.out / "export" / served, alias=self.alias, port=self.port, n_ctx=512
                    )
                    return
                time.sleep(1)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.done.set()
        if self.ident is not None:  # a test that failed before v2's run never started the watcher
            self.join(timeout=180)
        if self.server is not None:
            self.server.stop()


def _trainer(*args: str, out: Path | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "trainer", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=3000,
        env={**os.environ, "LOOP_GATEWAY_ADMIN_KEY": ADMIN_KEY},
    )
    if done.returncode != 0:
        compared = out / "eval" / "deployed.json" if out else None
        scores = ""
        if compared and compared.exists():
            report = json.loads(compared.read_text())
            scores = f"\nthrough the gateway: v1 {report['deployed']['scores']} vs v2 {report['new']['scores']}"
        pytest.fail(f"trainer {args[0]} failed:{scores}\n{done.stderr[-4000:]}")
    return done


def _json_out(done: subprocess.CompletedProcess) -> dict[str, Any]:
    """The command's JSON result: the last top-level object on stdout (a library may print before it)."""
    text = done.stdout
    start = 0 if text.startswith("{") else text.rindex("\n{") + 1
    return json.loads(text[start:])


def _ask(client: openai.OpenAI, user: str, prompt: str) -> tuple[str, str, str]:
    """(request id, variant, answer) of one order sent through the route."""
    raw = client.chat.completions.with_raw_response.create(
        model=ROUTE,
        user=user,
        temperature=0,
        max_tokens=40,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
    )
    answer = raw.parse()
    return raw.headers["X-Request-ID"], raw.headers["X-Model-Variant"], answer.choices[0].message.content or ""


def _users_give_feedback(gateway: Service, client: openai.OpenAI, traffic: list[dict[str, str]]) -> dict[str, int]:
    """Each order through the route; a wrong answer gets the right one as a correction, a right one a thumbs up."""
    given = {"correction": 0, "rating": 0}
    for n, row in enumerate(traffic):
        request_id, variant, text = _ask(client, f"shopper-{n}", row["prompt"])
        assert variant == f"{ROUTE}:v1"
        body = (
            {"request_id": request_id, "rating": "up"}
            if exact_match(text, row["completion"])
            else {"request_id": request_id, "kind": "correction", "correction": row["completion"]}
        )
        response = httpx.post(f"{gateway.url}/v1/feedback", json=body, headers=ADMIN, timeout=10)
        assert response.status_code == 201, response.text  # joined to the captured answer
        given["rating" if "rating" in body else "correction"] += 1
    return given


def _promoted(gateway: Service, client: openai.OpenAI, prompts: list[str]) -> dict[str, int]:
    """Orders from new users until the guard has promoted v2 to 100 %; answers per variant."""
    served = {f"{ROUTE}:v1": 0, f"{ROUTE}:v2": 0}
    for n in range(400):
        _, variant, text = _ask(client, f"later-shopper-{n}", prompts[n % len(prompts)])
        served[variant] += 1
        if variant.endswith(":v2"):  # llama.cpp serves the tuned v2: its answers are the task's JSON orders
            assert json.loads(text)["product"], text
        variants = httpx.get(f"{gateway.url}/admin/routes/{ROUTE}", headers=ADMIN, timeout=10).json()["variants"]
        if variants[0]["model"] == f"{ROUTE}:v2" and variants[0]["weight"] == 100:
            return served
    raise AssertionError(f"v2 not promoted after 400 requests; served {served}")


def test_corrections_from_traffic_train_a_v2_that_beats_v1_and_is_promoted(tmp_path, monkeypatch):
    from trainer import converter
    from trainer.stages import evaluate_stage, export_stage, prepare_stage, push_stage, train_stage

    converter.ensure()
    plain, sized = _orders()
    v1_data = tmp_path / "v1-orders.jsonl"
    v1_data.write_text("".join(json.dumps(r) + "\n" for r in plain[:V1_ROWS]))
    traffic = [plain[V1_ROWS + i // 4] if i % 4 == 3 else sized[i - i // 4] for i in range(TRAFFIC)]
    database = f"sqlite:///{tmp_path / 'gateway.db'}"
    ports = {1: free_port(), 2: free_port()}
    servers: list[Service] = []
    v2_server = ServeWhenExported(tmp_path / "v2", f"{ROUTE}:v2", ports[2])
    started = time.monotonic()
    try:
        with (
            running_ollama_double() as double,
            running_gateway(
                [("openai", f"http://127.0.0.1:{port}") for port in ports.values()], env={"DATABASE_URL": database}
            ) as gateway,
        ):
            monkeypatch.setenv("LOOP_GATEWAY_ADMIN_KEY", ADMIN_KEY)
            # 1. v1, weak on purpose; deployed on the route, whose answers are then captured.
            v1 = load_config(
                _config(
                    tmp_path,
                    "v1",
                    paths=[v1_data],
                    out=tmp_path / "v1",
                    double=double,
                    gateway=gateway,
                    training={"max_steps": V1_STEPS},
                    data={"eval_fraction": 0.15},
                    evaluation={"max_examples": 4},
                    gate={"min_loss_improvement": 0.0, "min_score_gain": 0.0, "min_score": 0.0},
                )
            )
            for stage in (prepare_stage, train_stage, evaluate_stage, export_stage):
                stage(v1)
            served = json.loads((v1.output_dir / "export" / "export.json").read_text())["served"]
            servers.append(
                start_llama_server(v1.output_dir / "export" / served, alias=f"{ROUTE}:v1", port=ports[1], n_ctx=512)
            )
            # force: v1 is weak on purpose; whether it beats the base on its few own held-out rows is not the point
            assert push_stage(v1, force=True)["deploy"]["action"] == "created"
            route = httpx.get(f"{gateway.url}/admin/routes/{ROUTE}", headers=ADMIN, timeout=10).json()
            spec = {k: route[k] for k in ("variants", "fallbacks", "shadow", "guard")} | {"capture": {"percent": 100}}
            assert (
                httpx.put(f"{gateway.url}/admin/routes/{ROUTE}", json=spec, headers=ADMIN, timeout=10).status_code
                == 200
            )
            v1_done = time.monotonic()

            # 2. Traffic with feedback.
            client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=120)
            given = _users_give_feedback(gateway, client, traffic)
            assert given["correction"] >= TRAFFIC // 4, f"v1 was not weak enough to need corrections: {given}"
            wait_until(
                lambda: sample(gateway.url, "gateway_capture_written_total") == TRAFFIC,
                timeout=30,
                what="every answer captured",
            )

            # 3. dataset -> run: v2 on v1's rows and the corrected traffic, gated against the deployed v1.
            dataset = tmp_path / "dataset.jsonl"
            report = _json_out(
                _trainer(
                    "dataset",
                    "--database-url",
                    database,
                    "--route",
                    ROUTE,
                    "--since",
                    "1d",
                    "--heldout",
                    "0.25",
                    "--out",
                    str(dataset),
                )
            )
            assert report["reasons"]["correction"] == given["correction"] and report["heldout"] == TRAFFIC // 4
            v2_config = _config(
                tmp_path,
                "v2",
                paths=[v1_data, dataset],
                out=tmp_path / "v2",
                double=double,
                gateway=gateway,
                training={"max_steps": V2_STEPS},
                data={"eval_paths": [str(dataset.with_name("dataset.heldout.jsonl"))], "min_eval_examples": 4},
                evaluation={"max_examples": 16, "baseline": f"route:{ROUTE}"},
                # The gate that matters here is against the deployed v1; the one against the
                # base model only needs v2 to be better at all.
                gate={
                    "min_loss_improvement": 0.0,
                    "min_score_gain": 0.0,
                    "min_score": 0.0,
                    "deployed_min_score_gain": 0.0,
                },
            )
            v2_server.start()
            run = _json_out(_trainer("run", "--config", str(v2_config), out=tmp_path / "v2"))
            v2_done = time.monotonic()
            if v2_server.error:
                raise v2_server.error
            vs = run["push"]["vs_deployed"]
            _print_numbers(given, report, run, time.monotonic() - started, v1_done - started, v2_done - v1_done)
            assert vs["gate"]["passed"] and run["push"]["deploy"]["action"] == "canary"
            assert vs["new"]["model"] == f"{ROUTE}:v2" and vs["deployed"]["model"] == f"{ROUTE}:v1"
            assert vs["new"]["scores"]["exact_match"] > vs["deployed"]["scores"]["exact_match"]
            assert vs["rows"] == report["heldout"]
            v1_sha = json.loads((tmp_path / "v1" / "export" / "export.json").read_text())["files"]["q4_k_m"]["sha256"]
            assert run["export"]["files"]["q4_k_m"]["sha256"] != v1_sha  # v2 is new weights, not v1 again

            # 4. The guard steps v2 up on live traffic and promotes it.
            later = _promoted(gateway, client, [r["prompt"] for r in sized[TRAFFIC:]])
            history = httpx.get(f"{gateway.url}/admin/routes/{ROUTE}/history", headers=ADMIN, timeout=10).json()[
                "history"
            ]
    finally:
        v2_server.stop()
        for server in servers:
            server.stop()
    assert [h["why"] for h in history][:3] == ["promote", "step", "manual"], history
    assert history[0]["who"] == history[1]["who"] == "guard"
    print(f"promotion: {sum(later.values())} requests, served by {later}")


def _print_numbers(
    given: dict[str, int], report: dict[str, Any], run: dict[str, Any], total_s: float, v1_s: float, v2_s: float
) -> None:
    vs = run["push"]["vs_deployed"]
    base_eval = run["evaluate"]
    print(
        f"\nv1: {V1_ROWS} rows without sizes, {V1_STEPS} steps ({v1_s:.0f}s to deployed); "
        f"traffic {TRAFFIC}: {given['correction']} corrections, {given['rating']} thumbs up"
    )
    print(f"dataset: train {report['train']} ({report['train_by_reason']}), held out {report['heldout']}")
    print(
        f"v2: {V2_STEPS} steps on {run['prepare']['train']} rows ({v2_s:.0f}s for dataset + run); "
        f"PyTorch on the held-out rows: base {base_eval['base']['scores']} -> v2 {base_eval['tuned']['scores']}"
    )
    print(
        f"through the gateway on {vs['rows']} held-out rows (greedy, Q4_K_M): "
        f"v1 {vs['deployed']['scores']} vs v2 {vs['new']['scores']}; gate passed: {vs['gate']['passed']}"
    )
    print(f"total {total_s:.0f}s")
