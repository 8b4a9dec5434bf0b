"""push to the llama.cpp and vLLM targets: the adapter's files into the shared adapters folder, NAME:vN
and NAME in the real gateway's adapter registry, and the gateway serving it from the vLLM double."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import openai
import pytest

from testkit.vllm import VLLM_BASE, running_vllm_double
from tests.support.gateway import ADMIN_KEY, running_gateway
from tests.trainer.conftest import write_config
from tests.trainer.test_push import _fake_earlier_stages, _tiny_gguf
from trainer.config import load_config
from trainer.errors import ConfigError, PushError
from trainer.manifest import format_versions, list_versions
from trainer.stages import push_stage

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def _trained(cfg, weights: bytes) -> str:
    """What train and export leave: a PEFT folder and the adapter GGUF in export.json. Returns the digest."""
    model = (
        _tiny_gguf(cfg.output_dir / "export" / "model-q4_k_m.gguf", fill=0.5)
        if not (cfg.output_dir / "export" / "model-q4_k_m.gguf").exists()
        else cfg.output_dir / "export" / "model-q4_k_m.gguf"
    )
    _fake_earlier_stages(cfg.output_dir, model)
    peft = cfg.output_dir / "adapter"
    peft.mkdir(parents=True, exist_ok=True)
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    (peft / "adapter_model.safetensors").write_bytes(weights)
    adapter = _tiny_gguf(cfg.output_dir / "export" / "adapter-f16.gguf", fill=len(weights))
    info_path = cfg.output_dir / "export" / "export.json"
    info = json.loads(info_path.read_text())
    info["files"]["adapter"] = {
        "file": adapter.name,
        "sha256": hashlib.sha256(adapter.read_bytes()).hexdigest(),
        "bytes": adapter.stat().st_size,
    }
    info_path.write_text(json.dumps(info))
    return hashlib.sha256(weights).hexdigest()


def _cfg(tmp_path: Path, gateway_url: str, targets: list[str]):
    (tmp_path / "out" / "export").mkdir(parents=True, exist_ok=True)
    path = write_config(
        tmp_path / "run.yaml",
        source="x/y",
        data_paths=["d.jsonl"],
        output_dir=str(tmp_path / "out"),
        ollama={"host": "http://127.0.0.1:9", "model": "orders", "retries": 0},
        push={
            "targets": targets,
            "adapters": {"gateway_url": gateway_url, "base": VLLM_BASE, "dir": "shared-adapters"},
        },
    )
    return load_config(path)


def test_push_publishes_adapters_for_llama_cpp_and_vllm_and_the_gateway_serves_them(tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_ADMIN_KEY", ADMIN_KEY)
    with running_vllm_double() as double, running_gateway([{"kind": "vllm", "url": double.url}]) as gateway:
        cfg = _cfg(tmp_path, gateway.url, ["llamacpp", "vllm"])
        digest = _trained(cfg, b"weights of version one")
        first = push_stage(cfg)
        shared = tmp_path / "shared-adapters"  # relative to the config file
        stem = f"orders-{digest[:8]}"
        assert (shared / f"{stem}.gguf").read_bytes() == (cfg.output_dir / "export" / "adapter-f16.gguf").read_bytes()
        assert (shared / stem / "adapter_model.safetensors").read_bytes() == b"weights of version one"
        assert not list(shared.glob("*.partial"))
        assert first["adapters"]["names"] == ["orders:v1", "orders"] and first["ollama"]["tag"] is None
        record = httpx.get(f"{gateway.url}/admin/adapters/orders:v1", headers=ADMIN, timeout=10).json()
        assert record["digest"] == digest and record["version"] == 1 and record["base"] == VLLM_BASE
        assert record["files"] == {"gguf": str(shared / f"{stem}.gguf"), "peft": str(shared / stem)}

        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=20)
        ask = lambda model: (
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "2 red mugs"}])
            .choices[0]
            .message.content
        )
        assert ask("orders").startswith(f"{stem}:")

        digest2 = _trained(cfg, b"weights of version two")
        second = push_stage(cfg)
        assert second["version"] == 2 and second["adapters"]["names"] == ["orders:v2", "orders"]
        assert ask("orders").startswith(f"orders-{digest2[:8]}:")  # NAME moved to the new version
        assert ask("orders:v1").startswith(f"{stem}:")  # NAME:v1 stays on the old one
        assert "orders:v2" in format_versions(list_versions(cfg.output_dir))


def test_push_without_an_admin_key_fails_clearly_before_registering(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEWAY_ADMIN_KEY", raising=False)
    cfg = _cfg(tmp_path, "http://127.0.0.1:9", ["vllm"])
    _trained(cfg, b"w")
    with pytest.raises(PushError, match="GATEWAY_ADMIN_KEY is not set"):
        push_stage(cfg)


def test_adapter_targets_need_their_settings(tmp_path):
    path = write_config(
        tmp_path / "run.yaml",
        source="x/y",
        data_paths=["d.jsonl"],
        output_dir=str(tmp_path / "o"),
        push={"targets": ["llamacpp"]},
    )
    with pytest.raises(ConfigError, match="push.adapters"):
        load_config(path)
