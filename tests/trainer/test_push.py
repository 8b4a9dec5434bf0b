"""push through the real `ollama` client to the Ollama API double: blobs HEAD-first, create payload,
version tags, the previous version kept on failure, and the manifests that `list` shows."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.ollama import OllamaDoubleControl, running_ollama_double
from tests.trainer.conftest import write_config
from trainer.config import load_config
from trainer.errors import PushError
from trainer.manifest import format_versions, list_versions
from trainer.stages import push_stage

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"


def _tiny_gguf(path: Path, fill: float) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_file_type(15)
    writer.add_tensor("token_embd.weight", np.full((4, 8), fill, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _fake_earlier_stages(out: Path, model_file: Path, *, gate_passed: bool = True) -> dict:
    """What prepare, train, evaluate and export leave behind, so push runs alone and fast."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "eval").mkdir(exist_ok=True)
    (out / "data" / "prepare_report.json").write_text(
        json.dumps({"data_sha256": "ab" * 32, "train": 10, "eval": 2, "bad_rows": [], "duplicates": 0})
    )
    scores = lambda loss, em: {"eval_loss": loss, "perplexity": 2.0, "scores": {"exact_match": em}}
    report = {
        "base": scores(2.0, 0.0),
        "tuned": scores(0.5, 0.9),
        "primary_check": "exact_match",
        "gate": {"passed": gate_passed, "reasons": [] if gate_passed else ["exact_match 0 does not beat 0"]},
    }
    (out / "eval" / "report.json").write_text(json.dumps(report))
    (out / "eval" / "summary.md").write_text("# Evaluation\n")
    write_export(out, model_file)
    return report


def write_export(out: Path, model_file: Path) -> dict:
    info = {
        "served": model_file.name,
        "template": TEMPLATE,
        "system": "Reply with JSON.",
        "parameters": {"temperature": 0, "stop": ["<|im_end|>"]},
        "files": {
            "q4_k_m": {
                "file": model_file.name,
                "sha256": hashlib.sha256(model_file.read_bytes()).hexdigest(),
                "bytes": model_file.stat().st_size,
            }
        },
        "timings_s": {"convert": 1.0},
        "total_s": 1.0,
        "converter": "llama-cpp-python==0.3.36",
    }
    (out / "export").mkdir(parents=True, exist_ok=True)
    (out / "export" / "export.json").write_text(json.dumps(info))
    return info


@pytest.fixture()
def double():
    with running_ollama_double() as service:
        yield service


def _cfg(tmp_path: Path, host: str, **overrides):
    path = write_config(
        tmp_path / "run.yaml",
        source="x/y",
        data_paths=["d.jsonl"],
        output_dir=str(tmp_path / "out"),
        ollama={"host": host, "model": "orders", "retries": 1, "retry_backoff_s": 0},
    )
    return load_config(path, overrides)


def test_push_uploads_once_creates_versions_and_moves_latest(tmp_path, double):
    control = OllamaDoubleControl(double.url)
    cfg = _cfg(tmp_path, double.url)
    (cfg.output_dir / "export").mkdir(parents=True)
    model = _tiny_gguf(cfg.output_dir / "export" / "model-q4_k_m.gguf", fill=0.5)
    _fake_earlier_stages(cfg.output_dir, model)
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()

    first = push_stage(cfg)
    stats = control.stats()
    assert stats["blobs"] == {digest: model.stat().st_size}
    assert stats["calls"]["HEAD /api/blobs"] == 1 and stats["calls"]["POST /api/blobs"] == 1
    created = stats["created"]["orders:v1"]
    assert created["files"] == {"model-q4_k_m.gguf": digest}
    assert created["template"] == TEMPLATE and created["system"] == "Reply with JSON."
    assert created["parameters"] == {"temperature": 0, "stop": ["<|im_end|>"]}
    assert stats["created"]["orders:latest"]["files"] == created["files"]
    assert first["version"] == 1 and first["ollama"]["blob_uploaded"] is True
    assert first["artifacts"]["q4_k_m"]["sha256"] == digest.removeprefix("sha256:")

    second = push_stage(cfg)  # same file again: HEAD finds the blob, nothing is uploaded
    stats = control.stats()
    assert stats["calls"]["HEAD /api/blobs"] == 2 and stats["calls"]["POST /api/blobs"] == 1
    assert second["version"] == 2 and second["ollama"]["blob_uploaded"] is False
    assert {"orders:v1", "orders:v2", "orders:latest"} <= set(stats["created"])

    manifests = list_versions(cfg.output_dir)
    assert [m["version"] for m in manifests] == [1, 2]
    assert manifests[0]["data"]["sha256"] == "ab" * 32 and manifests[0]["metrics"]["gate"]["passed"]
    assert (cfg.output_dir / "versions" / "v2" / "summary.md").exists()
    table = format_versions(manifests)
    assert "orders:v1" in table and "orders:v2" in table and "exact_match 0.00 -> 0.90" in table
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "list", "--config", str(tmp_path / "run.yaml")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "orders:v2" in done.stdout


def test_a_failed_create_leaves_the_previous_version_serving(tmp_path, double):
    control = OllamaDoubleControl(double.url)
    cfg = _cfg(tmp_path, double.url)
    (cfg.output_dir / "export").mkdir(parents=True)
    good = _tiny_gguf(cfg.output_dir / "export" / "model-q4_k_m.gguf", fill=0.25)
    _fake_earlier_stages(cfg.output_dir, good)
    push_stage(cfg)
    v1_files = control.stats()["created"]["orders:latest"]["files"]

    broken = cfg.output_dir / "export" / "broken.gguf"
    broken.write_bytes(b"NOTGGUF" + bytes(64))  # Ollama rejects it at create time
    write_export(cfg.output_dir, broken)
    with pytest.raises(PushError, match="create orders:v2: Ollama refused it: .*not a GGUF"):
        push_stage(cfg)
    stats = control.stats()
    assert stats["created"]["orders:latest"]["files"] == v1_files
    assert "orders:v2" not in stats["created"]
    assert [m["version"] for m in list_versions(cfg.output_dir)] == [1]


def test_forced_push_of_a_failed_gate_is_recorded(tmp_path, double):
    cfg = _cfg(tmp_path, double.url)
    (cfg.output_dir / "export").mkdir(parents=True)
    _fake_earlier_stages(cfg.output_dir, _tiny_gguf(cfg.output_dir / "export" / "m.gguf", fill=1.0), gate_passed=False)
    manifest = push_stage(cfg, force=True)
    assert manifest["forced"] is True and "FORCED" in format_versions(list_versions(cfg.output_dir))


def test_unreachable_ollama_is_a_clear_error(tmp_path):
    from testkit.processes import free_port

    cfg = _cfg(tmp_path, f"http://127.0.0.1:{free_port()}")
    (cfg.output_dir / "export").mkdir(parents=True)
    _fake_earlier_stages(cfg.output_dir, _tiny_gguf(cfg.output_dir / "export" / "m.gguf", fill=1.0))
    with pytest.raises(PushError, match=r"list models at http://127.0.0.1:\d+ failed after 2 attempts"):
        push_stage(cfg)


def test_push_with_a_missing_export_file_asks_to_export_again(tmp_path):
    from trainer.errors import StageOrderError

    cfg = _cfg(tmp_path, "http://127.0.0.1:9")
    (cfg.output_dir / "export").mkdir(parents=True)
    model = _tiny_gguf(cfg.output_dir / "export" / "m.gguf", fill=1.0)
    _fake_earlier_stages(cfg.output_dir, model)
    model.unlink()
    with pytest.raises(StageOrderError, match=r"m\.gguf is missing: run `export` again"):
        push_stage(cfg)


def test_adapter_serving_creates_a_model_from_the_base_plus_the_adapter(tmp_path, double):
    cfg = _cfg(tmp_path, double.url, **{"ollama.adapter_base": "smollm2:135m"})
    export_dir = cfg.output_dir / "export"
    export_dir.mkdir(parents=True)
    model = _tiny_gguf(export_dir / "model-q4_k_m.gguf", fill=0.5)
    adapter = _tiny_gguf(export_dir / "adapter-f16.gguf", fill=0.01)
    _fake_earlier_stages(cfg.output_dir, model)
    info = json.loads((export_dir / "export.json").read_text())
    info["files"]["adapter"] = {
        "file": adapter.name,
        "sha256": hashlib.sha256(adapter.read_bytes()).hexdigest(),
        "bytes": adapter.stat().st_size,
    }
    (export_dir / "export.json").write_text(json.dumps(info))

    manifest = push_stage(cfg)
    created = OllamaDoubleControl(double.url).stats()["created"]
    assert manifest["ollama"]["adapter_tag"] == "orders-adapter:v1"
    with_adapter = created["orders-adapter:v1"]
    assert with_adapter["parent_model"].startswith("smollm2:135m")
    assert with_adapter["adapters"] == {"adapter-f16.gguf": "sha256:" + info["files"]["adapter"]["sha256"]}
    assert with_adapter["template"] == TEMPLATE
