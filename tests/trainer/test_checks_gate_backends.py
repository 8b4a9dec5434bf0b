"""Task checks, the eval gate, backend selection and retry classification: pure logic, no model."""

from __future__ import annotations

import httpx
import pytest

import ollama
from trainer.backends import Capabilities, choose_backend
from trainer.checks import exact_match, json_schema, json_valid, run_checks
from trainer.config import GateConfig
from trainer.errors import BackendError, PushError
from trainer.evaluate import ModelScores, gate_decision
from trainer.push import next_version, with_retries

SCHEMA = {
    "type": "object",
    "required": ["product", "quantity"],
    "additionalProperties": False,
    "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"}},
}


def test_checks():
    assert exact_match('{"a": 1, "b": [2]}', '{"b":[2],"a":1}')  # JSON compared as values
    assert not exact_match('{"a": 2}', '{"a": 1}')
    assert exact_match("  hello ", "hello") and not exact_match("hello.", "hello")
    assert json_valid('{"x": null}') and not json_valid('{"x": }') and not json_valid("")
    assert json_schema('{"product": "mug", "quantity": 2}', SCHEMA)
    assert not json_schema('{"product": "mug", "quantity": "2"}', SCHEMA)
    assert not json_schema('{"product": "mug", "quantity": 2, "extra": 1}', SCHEMA)
    assert not json_schema("not json", SCHEMA)
    result = run_checks(
        ["exact_match", "json_valid", "json_schema", "stops_on_eos"],
        output='{"product": "mug"}',
        reference='{"product": "mug", "quantity": 1}',
        stopped_on_eos=False,
        schema=SCHEMA,
    )
    assert result == {"exact_match": False, "json_valid": True, "json_schema": False, "stops_on_eos": False}


def _scores(loss: float, em: float) -> ModelScores:
    return ModelScores(eval_loss=loss, perplexity=0.0, scores={"exact_match": em})


def test_gate_needs_both_lower_loss_and_a_higher_primary_score():
    gate = GateConfig(min_loss_improvement=0.1, min_score_gain=0.2, min_score=0.5)
    assert gate_decision(_scores(2.0, 0.1), _scores(1.0, 0.8), gate, "exact_match").passed
    loss_only = gate_decision(_scores(2.0, 0.1), _scores(1.85, 0.8), gate, "exact_match")
    assert not loss_only.passed and "eval loss 1.8500 is not below 1.8000" in loss_only.reasons[0]
    small_gain = gate_decision(_scores(2.0, 0.4), _scores(1.0, 0.55), gate, "exact_match")
    assert not small_gain.passed and "does not beat base 0.400 by more than 0.2" in small_gain.reasons[0]
    low = gate_decision(_scores(2.0, 0.0), _scores(1.0, 0.3), gate, "exact_match")
    assert low.reasons == ["exact_match 0.300 is under min_score 0.5"]
    # with zero margins the tuned model must still be strictly better, not equal
    assert not gate_decision(_scores(1.0, 0.5), _scores(1.0, 0.5), GateConfig(), "exact_match").passed


@pytest.mark.parametrize(
    "requested,four_bit,caps,expected",
    [
        ("auto", False, Capabilities(cuda=True, unsloth=True, bitsandbytes=True), "unsloth"),
        ("auto", False, Capabilities(cuda=True, unsloth=False, bitsandbytes=True), "peft"),
        ("auto", False, Capabilities(cuda=False, unsloth=True, bitsandbytes=False), "peft"),
        ("peft", False, Capabilities(cuda=True, unsloth=True, bitsandbytes=True), "peft"),
        ("auto", True, Capabilities(cuda=True, unsloth=False, bitsandbytes=True), "peft"),
        ("unsloth", True, Capabilities(cuda=True, unsloth=True, bitsandbytes=False), "unsloth"),
    ],
)
def test_backend_choice(requested, four_bit, caps, expected):
    assert choose_backend(requested, four_bit, caps) == expected


@pytest.mark.parametrize(
    "requested,four_bit,caps,message",
    [
        ("unsloth", False, Capabilities(cuda=False, unsloth=True, bitsandbytes=False), "CUDA is not available"),
        ("unsloth", False, Capabilities(cuda=True, unsloth=False, bitsandbytes=False), "the unsloth package"),
        ("auto", True, Capabilities(cuda=False, unsloth=False, bitsandbytes=True), "needs a CUDA GPU"),
        ("peft", True, Capabilities(cuda=True, unsloth=True, bitsandbytes=False), "needs the bitsandbytes package"),
    ],
)
def test_backend_refusals_say_what_is_missing(requested, four_bit, caps, message):
    with pytest.raises(BackendError, match=message):
        choose_backend(requested, four_bit, caps)


def test_retries_only_transient_errors():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ollama.ResponseError("busy", 503)
        return "ok"

    assert with_retries(flaky, what="create", retries=3, backoff_s=0) == "ok" and len(calls) == 3

    def refused():
        calls.append(1)
        raise ollama.ResponseError("invalid model name", 400)

    calls.clear()
    with pytest.raises(PushError, match="create: Ollama refused it: invalid model name"):
        with_retries(refused, what="create", retries=3, backoff_s=0)
    assert len(calls) == 1

    def down():
        calls.append(1)
        raise httpx.ConnectError("refused")

    calls.clear()
    with pytest.raises(PushError, match="failed after 3 attempts"):
        with_retries(down, what="list models", retries=2, backoff_s=0)
    assert len(calls) == 3


def test_next_version_counts_local_and_remote_tags(tmp_path):
    assert next_version(tmp_path, [], "m") == 1
    assert next_version(tmp_path, ["m:v1", "m:v7", "m:latest", "mm:v9", "other:v12"], "m") == 8
    (tmp_path / "versions" / "v9").mkdir(parents=True)
    (tmp_path / "versions" / "v9" / "manifest.json").write_text("{}")
    assert next_version(tmp_path, ["m:v7"], "m") == 10
