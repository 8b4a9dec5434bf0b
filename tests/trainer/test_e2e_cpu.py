"""End to end on a CPU with the real SmolLM2-135M-Instruct: the shipped example task goes through
prepare -> train -> evaluate -> export, llama.cpp serves the GGUF with the merged model's greedy answers,
push registers it with the Ollama double, and the gateway serves it to the `openai` SDK.

The pipeline runs once per session (it takes minutes on two shared cores); each test checks one stage.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from testkit.llama import start_llama_server
from testkit.ollama import OllamaDoubleControl, running_ollama_double
from testkit.processes import wait_until
from tests.support.gateway import ADMIN_KEY, running_gateway
from trainer.config import RunConfig
from trainer.data import read_prepared
from trainer.encoding import render
from trainer.stages import push_stage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
COMPARED_PROMPTS = 4


@pytest.fixture(scope="module")
def pipeline(order_json_run) -> Iterator[tuple[RunConfig, dict[str, Any]]]:
    yield order_json_run  # tests/trainer/conftest.py: one training run shared with test_deploy_e2e


def test_tuned_model_beats_the_base_on_held_out_data(pipeline):
    cfg, results = pipeline
    train, report = results["train"], results["evaluate"]
    assert train["backend"] == "peft" and train["steps"] == cfg.training.max_steps
    assert train["last_loss"] < train["first_loss"] / 4
    base, tuned = report["base"], report["tuned"]
    assert tuned["eval_loss"] < base["eval_loss"] * 0.8
    assert tuned["perplexity"] < base["perplexity"]
    assert tuned["scores"]["exact_match"] >= base["scores"]["exact_match"] + 0.3
    assert tuned["scores"]["json_schema"] > base["scores"]["json_schema"]
    assert tuned["scores"]["stops_on_eos"] == 1.0
    assert report["gate"]["passed"], report["gate"]["reasons"]
    print(
        f"\nCPU training: {train['tokens_per_s']} tokens/s over {train['steps']} steps ({train['wall_s']}s); "
        f"eval loss {base['eval_loss']} -> {tuned['eval_loss']}, exact match "
        f"{base['scores']['exact_match']} -> {tuned['scores']['exact_match']}"
    )


def test_export_writes_quantised_ggufs_an_adapter_and_a_modelfile(pipeline):
    import gguf

    cfg, results = pipeline
    info, out = results["export"], cfg.output_dir / "export"
    expected_types = {"f16": 1, "q8_0": 7, "q4_k_m": 15}
    for kind, file_type in expected_types.items():
        entry = info["files"][kind]
        path = out / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        reader = gguf.GGUFReader(path)
        field = reader.get_field("general.file_type")
        assert field.parts[field.data[0]][0] == file_type, kind
        assert reader.get_field("general.architecture").contents() == "llama"
    assert info["files"]["q4_k_m"]["bytes"] < info["files"]["q8_0"]["bytes"] < info["files"]["f16"]["bytes"]
    adapter = gguf.GGUFReader(out / info["files"]["adapter"]["file"])
    assert adapter.get_field("general.type").contents() == "adapter"
    assert adapter.get_field("adapter.type").contents() == "lora"
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-q4_k_m.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and f'SYSTEM """{cfg.data.system_prompt}"""' in modelfile
    adapter_modelfile = (out / "Modelfile.adapter").read_text()
    assert adapter_modelfile.startswith("FROM /") and adapter_modelfile.splitlines()[0].endswith(".gguf")
    assert "ADAPTER ./adapter-f16.gguf" in adapter_modelfile
    print(f"\nexport timings: {info['timings_s']} (total {info['total_s']}s)")


def _merged_greedy(cfg: RunConfig, prompts: list[list[dict]]) -> list[str]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.encoding import encode_prompt
    from trainer.generation import greedy_generate

    merged = cfg.output_dir / "export" / "merged"
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged)
    gens = greedy_generate(
        model, tok, [encode_prompt(tok, m) for m in prompts], max_new_tokens=cfg.evaluation.max_new_tokens, batch_size=1
    )
    return [g.text for g in gens]


def test_llama_cpp_serves_the_gguf_with_the_merged_models_greedy_answers(pipeline):
    from transformers import AutoTokenizer

    cfg, _ = pipeline
    held = read_prepared(cfg.output_dir / "data" / "eval.jsonl")[:COMPARED_PROMPTS]
    contexts = [m[:-1] for m in held]
    expected = _merged_greedy(cfg, contexts)
    tok = AutoTokenizer.from_pretrained(cfg.output_dir / "export" / "merged")
    server = start_llama_server(cfg.output_dir / "export" / "model-f16.gguf", alias="order-json", n_ctx=512)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        served = []
        for context in contexts:
            # The same prompt text PyTorch saw (rendered by the tokenizer's template), decoded greedily.
            answer = client.completions.create(
                model="order-json",
                prompt=render(tok, context, generation_prompt=True),
                max_tokens=cfg.evaluation.max_new_tokens,
                temperature=0,
                stop=["<|im_end|>"],
            )
            served.append(answer.choices[0].text)
    finally:
        server.stop()
    assert served == expected
    assert all(json.loads(s) for s in served)  # and they are the task's JSON answers


@pytest.fixture(scope="module")
def double():
    with running_ollama_double() as service:
        yield service


def test_push_registers_the_model_with_ollama_and_the_gateway_serves_it(pipeline, double):
    cfg, results = pipeline
    cfg = cfg.model_copy(update={"ollama": cfg.ollama.model_copy(update={"host": double.url, "retry_backoff_s": 0})})
    manifest = push_stage(cfg)
    info = results["export"]
    stats = OllamaDoubleControl(double.url).stats()
    digest = "sha256:" + info["files"]["q4_k_m"]["sha256"]
    assert stats["blobs"][digest] == info["files"]["q4_k_m"]["bytes"]
    created = stats["created"][f"{cfg.ollama.model}:v1"]
    assert created["files"] == {"model-q4_k_m.gguf": digest}
    assert created["template"] == info["template"] and created["system"] == cfg.data.system_prompt
    assert created["parameters"]["stop"] == ["<|im_end|>"] and created["parameters"]["temperature"] == 0
    assert stats["created"][f"{cfg.ollama.model}:latest"]["files"] == created["files"]
    assert manifest["artifacts"]["q4_k_m"]["sha256"] == info["files"]["q4_k_m"]["sha256"]
    assert manifest["metrics"]["gate"]["passed"]

    with running_gateway([("ollama", double.url)]) as gateway:
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=2, timeout=30)
        wanted = f"{cfg.ollama.model}:latest"
        wait_until(
            lambda: wanted in {m.id for m in client.models.list().data}, timeout=30, what=f"gateway lists {wanted}"
        )
        answer = client.chat.completions.create(
            model=f"{cfg.ollama.model}:latest",
            temperature=0,
            messages=[{"role": "user", "content": "Send 2 red mugs."}],
        )
        assert answer.choices[0].message.content and answer.model.startswith(cfg.ollama.model)
    chat_calls = OllamaDoubleControl(double.url).stats()["bodies"].get("/api/chat", [])
    assert any(body.get("model", "").startswith(cfg.ollama.model) for body in chat_calls)
