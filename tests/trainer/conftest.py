"""Fixtures for the trainer tests: a tiny real tokenizer and model so the fast tests run the real code
(chat templates, PEFT, the training loop) in seconds, plus helpers to write configs and data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

# SmolLM2's chat template (ChatML with a default system prompt), as its tokenizer carries it.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tokenizer(
    template: str = CHATML,
    *,
    specials: tuple[str, ...] = ("<|im_start|>", "<|im_end|>"),
    bos: str | None = None,
    eos: str = "<|im_end|>",
):
    """A byte-level tokenizer (one token per byte, no merges) with real special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core)
    tok.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in (bos, eos)]})
    tok.add_special_tokens({"eos_token": eos, "pad_token": eos, **({"bos_token": bos} if bos else {})})
    tok.chat_template = template
    return tok


@pytest.fixture(scope="session")
def chatml_tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, chatml_tokenizer) -> Path:
    """A 2-layer random Llama with the byte tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(chatml_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=chatml_tokenizer.eos_token_id,
        pad_token_id=chatml_tokenizer.pad_token_id,
        bos_token_id=None,
    )
    target = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(target)
    chatml_tokenizer.save_pretrained(target)
    return target


EXAMPLE = Path(__file__).resolve().parents[2] / "trainer" / "examples" / "order_json" / "config.yaml"


@pytest.fixture(scope="session")
def order_json_run(tmp_path_factory):
    """The shipped example task through prepare, train, evaluate and export on the real SmolLM2, once per
    session (minutes on a CPU): the slow end-to-end modules share it. Returns (config, stage results)."""
    from trainer import converter
    from trainer.config import load_config
    from trainer.stages import evaluate_stage, export_stage, prepare_stage, train_stage

    converter.ensure()  # install step (pip fetches the pinned sdist once); export itself never downloads
    cfg = load_config(EXAMPLE, {"output_dir": str(tmp_path_factory.mktemp("order-json"))})
    results = {
        "prepare": prepare_stage(cfg),
        "train": train_stage(cfg),
        "evaluate": evaluate_stage(cfg),
        "export": export_stage(cfg),
    }
    return cfg, results


def order_rows(n: int) -> list[dict[str, str]]:
    colors = ["red", "blue", "green", "black"]
    return [
        {
            "prompt": f"send {i % 7 + 1} {colors[i % 4]} mugs #{i}",
            "completion": json.dumps({"product": "mug", "quantity": i % 7 + 1, "color": colors[i % 4]}),
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_config(
    path: Path, *, source: str, data_paths: list[str], output_dir: str, **sections: dict[str, Any]
) -> Path:
    """A run config with small defaults; keyword sections replace or extend the defaults."""
    cfg: dict[str, Any] = {
        "base_model": {"source": source},
        "data": {
            "paths": data_paths,
            "format": "auto",
            "max_seq_length": 256,
            "eval_fraction": 0.2,
            "min_eval_examples": 2,
        },
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 4, "batch_size": 2, "learning_rate": 0.01, "save_steps": 2, "seed": 3},
        "evaluation": {
            "checks": ["exact_match", "json_valid"],
            "primary_check": "exact_match",
            "max_new_tokens": 8,
            "max_examples": 4,
        },
        "ollama": {"host": "http://127.0.0.1:9", "model": "tiny-test", "retries": 0},
        "output_dir": output_dir,
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
