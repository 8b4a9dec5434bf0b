"""The real training loop on a tiny random Llama: determinism, resume after interruption, stage order,
and the eval gate stopping a model that did not learn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.conftest import order_rows, write_config, write_jsonl
from trainer.config import load_config
from trainer.errors import GateRefused, StageOrderError
from trainer.stages import evaluate_stage, prepare_stage, push_stage
from trainer.train import micro_batch_order, micro_batches_for_step, train


def _cfg(tmp_path: Path, model_dir: Path, name: str, **overrides):
    data = write_jsonl(tmp_path / "orders.jsonl", order_rows(20))
    path = write_config(
        tmp_path / f"{name}.yaml", source=str(model_dir), data_paths=[str(data)], output_dir=str(tmp_path / name)
    )
    return load_config(path, overrides)


def _adapter_weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(output_dir / "adapter" / "adapter_model.safetensors")


def _losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def test_batch_order_is_a_pure_function_of_seed_and_epoch(tmp_path, tiny_model_dir):
    assert micro_batch_order(10, 3, seed=1, epoch=0) == micro_batch_order(10, 3, seed=1, epoch=0)
    assert micro_batch_order(10, 3, seed=1, epoch=0) != micro_batch_order(10, 3, seed=1, epoch=1)
    cfg = _cfg(
        tmp_path, tiny_model_dir, "order", **{"training.gradient_accumulation_steps": 2, "training.batch_size": 3}
    )
    seen = [i for step in range(4) for batch in micro_batches_for_step(step, 10, cfg) for i in batch]
    assert sorted(seen[:10]) == list(range(10))  # epoch 0 covers every example once, then epoch 1 starts


def test_same_seed_gives_the_same_run(tmp_path, tiny_model_dir):
    runs = []
    for name in ("a", "b"):
        cfg = _cfg(tmp_path, tiny_model_dir, name)
        prepare_stage(cfg)
        summary = train(cfg)
        assert summary.backend == "peft" and summary.steps == 4 and summary.trained_tokens > 0
        runs.append((_losses(cfg.output_dir), _adapter_weights(cfg.output_dir)))
    (losses_a, w_a), (losses_b, w_b) = runs
    assert len(losses_a) == 4 and losses_a == losses_b
    assert w_a.keys() == w_b.keys() and all((w_a[k] == w_b[k]).all() for k in w_a)
    other = _cfg(tmp_path, tiny_model_dir, "c", **{"training.seed": 4})
    prepare_stage(other)
    train(other)
    assert _losses(other.output_dir) != losses_a


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, tiny_model_dir):
    straight = _cfg(tmp_path, tiny_model_dir, "straight")
    prepare_stage(straight)
    train(straight)

    resumed = _cfg(tmp_path, tiny_model_dir, "resumed")
    prepare_stage(resumed)
    first = train(resumed, stop_after=2)  # as if killed right after the step-2 checkpoint
    assert first.steps == 2 and not (resumed.output_dir / "adapter").exists()
    assert (resumed.output_dir / "checkpoints" / "step-000002" / "state.pt").exists()
    second = train(resumed)
    assert second.resumed_from == 2 and second.steps == 4
    a, b = _adapter_weights(straight.output_dir), _adapter_weights(resumed.output_dir)
    assert all(((a[k] - b[k]).abs().max() < 1e-6) for k in a)
    assert _losses(resumed.output_dir) == _losses(straight.output_dir)

    changed = _cfg(tmp_path, tiny_model_dir, "resumed", **{"training.learning_rate": 0.02})
    assert train(changed).resumed_from == 0  # a checkpoint of another config is not resumed


def test_stages_refuse_to_run_out_of_order(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, "fresh")
    with pytest.raises(StageOrderError, match="run `prepare` first"):
        train(cfg)
    prepare_stage(cfg)
    with pytest.raises(StageOrderError, match="run `train` first"):
        evaluate_stage(cfg)
    with pytest.raises(StageOrderError, match="run `evaluate` first"):
        push_stage(cfg)


def test_gate_report_and_push_refusal_for_a_model_that_did_not_learn(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, "gate", **{"training.max_steps": 1, "training.learning_rate": 1e-6})
    prepare_stage(cfg)
    train(cfg)
    report = evaluate_stage(cfg)
    assert not report["gate"]["passed"] and report["gate"]["reasons"]
    assert report["held_out_examples"] == 4 and len(report["examples"]) == 4
    for side in ("base", "tuned"):
        assert set(report[side]["scores"]) == {"exact_match", "json_valid"}
        assert report[side]["perplexity"] > 1
    summary = (cfg.output_dir / "eval" / "summary.md").read_text()
    assert "**Gate: failed**" in summary and "| eval loss |" in summary
    with pytest.raises(GateRefused, match="use --force"):
        push_stage(cfg)


def test_assistant_loss_matches_the_models_own_loss(tiny_model_dir):
    """The logits_to_keep shortcut must give the same number as the full forward with labels."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.encoding import IGNORE
    from trainer.loss import assistant_loss_sum

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :7] = IGNORE
    labels[2, 10:] = IGNORE
    mask = torch.ones_like(ids)
    mask[2, 10:] = 0
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    total, count = assistant_loss_sum(model, batch)
    assert count == 2 * 5 + 3
    assert torch.allclose(total / count, model(**batch).loss, atol=1e-6)


def test_run_stops_before_export_when_the_gate_fails(tmp_path, tiny_model_dir):
    from trainer.stages import run_all

    cfg = _cfg(tmp_path, tiny_model_dir, "run", **{"training.max_steps": 1, "training.learning_rate": 1e-6})
    with pytest.raises(GateRefused, match="stopping before export"):
        run_all(cfg)
    assert (cfg.output_dir / "eval" / "summary.md").exists()
    assert not (cfg.output_dir / "export").exists() and not (cfg.output_dir / "versions").exists()
