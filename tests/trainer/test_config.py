"""The run config: the shipped example validates, mistakes are named, overrides apply."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.trainer.conftest import write_config
from trainer.config import load_config, parse_set_option
from trainer.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "trainer" / "examples" / "order_json" / "config.yaml"


def _config(tmp_path: Path, **sections) -> Path:
    return write_config(
        tmp_path / "run.yaml", source="some/hub-model", data_paths=["data.jsonl"], output_dir="out", **sections
    )


def test_example_config_validates_and_resolves_paths_against_its_folder():
    cfg = load_config(EXAMPLE)
    assert cfg.data.paths == [EXAMPLE.parent / "orders.jsonl"]
    assert cfg.data.paths[0].is_file()
    assert cfg.output_dir.resolve() == (REPO / "runs" / "order-json").resolve()
    assert cfg.base_model.source.startswith("pkg://")  # not mistaken for a relative path
    assert cfg.export.serve in cfg.export.quantizations


def test_unknown_keys_are_rejected_with_their_dotted_path(tmp_path):
    path = _config(tmp_path, lora={"rank": 8})
    with pytest.raises(ConfigError, match=r"unknown key 'lora\.rank'"):
        load_config(path)
    raw = yaml.safe_load(path.read_text())
    del raw["lora"]["rank"]
    raw["epochz"] = 3
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"unknown key 'epochz'"):
        load_config(path)


def test_missing_sections_and_bad_values_are_named(tmp_path):
    path = tmp_path / "partial.yaml"
    path.write_text(yaml.safe_dump({"base_model": {"source": "x/y"}, "data": {"paths": ["d.jsonl"]}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "missing required key 'ollama'" in str(err.value)
    assert "missing required key 'output_dir'" in str(err.value)
    with pytest.raises(ConfigError, match=r"training\.learning_rate"):
        load_config(_config(tmp_path, training={"learning_rate": -1}))
    with pytest.raises(ConfigError, match=r"data\.format"):
        load_config(_config(tmp_path, data={"format": "csv"}))


def test_cross_field_rules(tmp_path):
    with pytest.raises(ConfigError, match="json_schema check needs evaluation.json_schema"):
        load_config(_config(tmp_path, evaluation={"checks": ["json_schema"], "primary_check": "json_schema"}))
    with pytest.raises(ConfigError, match="primary_check"):
        load_config(_config(tmp_path, evaluation={"checks": ["json_valid"], "primary_check": "exact_match"}))
    with pytest.raises(ConfigError, match="serve 'q6_k'"):
        load_config(_config(tmp_path, export={"quantizations": ["q8_0"], "serve": "q6_k"}))
    with pytest.raises(ConfigError, match=r"ollama\.host"):
        load_config(_config(tmp_path, ollama={"host": "ollama:11434", "model": "m"}))


def test_overrides_replace_fields_and_keep_types(tmp_path):
    path = _config(tmp_path)
    key, value = parse_set_option("lora.target_modules=[q_proj, o_proj]")
    cfg = load_config(path, {"training.max_steps": 9, key: value, "ollama.model": "other"})
    assert cfg.training.max_steps == 9
    assert cfg.lora.target_modules == ["q_proj", "o_proj"]
    assert cfg.ollama.model == "other"
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set_option("training.max_steps")
    with pytest.raises(ConfigError, match="unknown key 'training.max_stepz'"):
        load_config(path, {"training.max_stepz": 3})


def test_not_yaml_or_not_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_digest_changes_with_training_fields_only(tmp_path):
    path = _config(tmp_path)
    a, b = load_config(path), load_config(path, {"training.save_steps": 7})
    c = load_config(path, {"training.learning_rate": 0.5})
    assert a.digest() == b.digest() != c.digest()


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "trainer", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_reports_a_bad_config_in_one_line_without_a_traceback(tmp_path):
    path = _config(tmp_path, lora={"rank": 8})
    done = _cli("prepare", "--config", str(path))
    assert done.returncode == 2
    assert "unknown key 'lora.rank'" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_schema_documents_every_field():
    done = _cli("schema")
    assert done.returncode == 0, done.stderr
    schema = yaml.safe_load(done.stdout)

    def undocumented(node, defs, path=""):
        missing = []
        for name, prop in node.get("properties", {}).items():
            if "$ref" in prop:
                missing += undocumented(defs[prop["$ref"].split("/")[-1]], defs, f"{path}{name}.")
            elif "description" not in prop:
                missing.append(path + name)
        return missing

    assert undocumented(schema, schema["$defs"]) == []
    assert "lora" in schema["properties"] and "r" in schema["$defs"]["LoraConfig"]["properties"]


def test_cli_flags_become_config_overrides(tmp_path, monkeypatch):
    from trainer.cli import _overrides, _parser

    monkeypatch.chdir(tmp_path)
    args = _parser().parse_args(
        [
            "train",
            "--config",
            "run.yaml",
            "--max-steps",
            "3",
            "--data",
            "a.jsonl",
            "--data",
            "b.jsonl",
            "--backend",
            "peft",
            "--set",
            "lora.r=8",
            "--set",
            "gate.min_score=0.5",
        ]
    )
    assert _overrides(args) == {
        "training.max_steps": 3,
        "training.backend": "peft",
        "lora.r": 8,
        "gate.min_score": 0.5,
        "data.paths": [str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
    }
    cfg = load_config(_config(tmp_path), _overrides(args))
    assert cfg.training.max_steps == 3 and cfg.lora.r == 8 and cfg.data.paths[1] == tmp_path / "b.jsonl"


def test_cli_list_without_versions(tmp_path):
    done = _cli("list", "--config", str(_config(tmp_path)))
    assert done.returncode == 0 and done.stdout.strip() == "no versions pushed yet"
