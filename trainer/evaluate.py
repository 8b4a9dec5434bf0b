"""The evaluate stage: base vs tuned on the held-out split, and the gate that decides if it may ship.

Both models are the same PeftModel: the base is measured with its adapter disabled, so the numbers
differ only by the adapter. Scores are fractions of held-out prompts that pass each task check.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.backends import adapter_dir
from trainer.base_model import load_model, load_tokenizer, resolve_source
from trainer.checks import run_checks
from trainer.config import GateConfig, RunConfig
from trainer.data import read_prepared
from trainer.encoding import Messages, encode_conversation, encode_prompt, reference_answer
from trainer.errors import StageOrderError
from trainer.generation import eval_loss, greedy_generate

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class ModelScores:
    eval_loss: float
    perplexity: float
    scores: dict[str, float]


@dataclass
class GateResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def gate_decision(base: ModelScores, tuned: ModelScores, gate: GateConfig, primary: str) -> GateResult:
    """Pass only if the tuned model beats the base on loss and on the primary task check by the margins."""
    reasons = []
    max_loss = base.eval_loss * (1 - gate.min_loss_improvement)
    if not tuned.eval_loss < max_loss:
        reasons.append(
            f"eval loss {tuned.eval_loss:.4f} is not below {max_loss:.4f} "
            f"(base {base.eval_loss:.4f}, min_loss_improvement {gate.min_loss_improvement})"
        )
    b, t = base.scores[primary], tuned.scores[primary]
    if not t - b > gate.min_score_gain:
        reasons.append(f"{primary} {t:.3f} does not beat base {b:.3f} by more than {gate.min_score_gain}")
    if t < gate.min_score:
        reasons.append(f"{primary} {t:.3f} is under min_score {gate.min_score}")
    return GateResult(passed=not reasons, reasons=reasons)


def _score(
    model: PeftModel, tok: PreTrainedTokenizerBase, held: list[Messages], cfg: RunConfig, label: str
) -> tuple[ModelScores, list[dict[str, Any]]]:
    ev = cfg.evaluation
    loss = eval_loss(
        model,
        [encode_conversation(tok, m) for m in held],
        pad_id=tok.pad_token_id,
        batch_size=ev.batch_size,
        desc=f"{label} loss",
    )
    sample = held[: ev.max_examples]
    gens = greedy_generate(
        model,
        tok,
        [encode_prompt(tok, m) for m in sample],
        max_new_tokens=ev.max_new_tokens,
        batch_size=ev.batch_size,
        desc=f"{label} answers",
    )
    rows: list[dict[str, Any]] = []
    totals: dict[str, int] = {c: 0 for c in ev.checks}
    for messages, gen in zip(sample, gens, strict=True):
        result = run_checks(
            list(ev.checks),
            output=gen.text,
            reference=reference_answer(messages),
            stopped_on_eos=gen.stopped_on_eos,
            schema=ev.json_schema,
        )
        for name, ok in result.items():
            totals[name] += ok
        rows.append({"output": gen.text, "checks": result})
    scores = {name: round(n / len(sample), 4) for name, n in totals.items()}
    return ModelScores(round(loss, 5), round(math.exp(min(loss, 50.0)), 4), scores), rows


def evaluate(cfg: RunConfig) -> dict[str, Any]:
    """Score base and tuned models, decide the gate, write eval/report.json and eval/summary.md."""
    import torch
    from peft import PeftModel

    held_file, adapter = cfg.output_dir / "data" / "eval.jsonl", adapter_dir(cfg.output_dir)
    for needed, stage in ((held_file, "prepare"), (adapter / "adapter_config.json", "train")):
        if not needed.exists():
            raise StageOrderError(f"{needed} is missing: run `{stage}` first")
    source = resolve_source(cfg.base_model.source)
    tok = load_tokenizer(source, cfg.base_model.chat_template)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = PeftModel.from_pretrained(load_model(source, device=device), adapter)
    held = read_prepared(held_file)
    torch.manual_seed(cfg.training.seed)
    with model.disable_adapter():
        base, base_rows = _score(model, tok, held, cfg, "base")
    tuned, tuned_rows = _score(model, tok, held, cfg, "tuned")
    gate = gate_decision(base, tuned, cfg.gate, cfg.evaluation.primary_check)
    # Only the first max_examples rows were generated, so the examples stop where base_rows and tuned_rows do.
    examples = [
        {"prompt": m[-2]["content"], "reference": reference_answer(m), "base": b, "tuned": t}
        for m, b, t in zip(held, base_rows, tuned_rows, strict=False)
    ]
    report = {
        "base": asdict(base),
        "tuned": asdict(tuned),
        "gate": asdict(gate),
        "primary_check": cfg.evaluation.primary_check,
        "thresholds": cfg.gate.model_dump(),
        "held_out_examples": len(held),
        "generated_examples": len(examples),
        "examples": examples,
        "baseline": cfg.evaluation.baseline,
    }
    out = cfg.output_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out / "summary.md").write_text(summary_markdown(report))
    log.info("gate %s: base %s, tuned %s", "passed" if gate.passed else "FAILED", base.scores, tuned.scores)
    return report


def summary_markdown(report: dict[str, Any]) -> str:
    base, tuned, primary = report["base"], report["tuned"], report["primary_check"]
    lines = [
        "# Evaluation",
        "",
        f"Held-out examples: {report['held_out_examples']} (generated for {report['generated_examples']})",
        "",
        "| metric | base | tuned |",
        "|---|---|---|",
        f"| eval loss | {base['eval_loss']:.4f} | {tuned['eval_loss']:.4f} |",
        f"| perplexity | {base['perplexity']:.2f} | {tuned['perplexity']:.2f} |",
    ]
    lines += [
        f"| {name}{' (gate)' if name == primary else ''} | {base['scores'][name]:.3f} | {tuned['scores'][name]:.3f} |"
        for name in tuned["scores"]
    ]
    gate = report["gate"]
    lines += ["", f"**Gate: {'passed' if gate['passed'] else 'failed'}**"]
    lines += [f"- {r}" for r in gate["reasons"]]
    baseline = report.get("baseline", "base")
    if baseline.startswith("route:"):
        lines += [
            "",
            f"Against the version deployed on route `{baseline.removeprefix('route:')}`: at push, once "
            "the new version is served (eval/deployed.json).",
        ]
    return "\n".join(lines) + "\n"


def load_report(output_dir: Path) -> dict[str, Any]:
    path = output_dir / "eval" / "report.json"
    if not path.exists():
        raise StageOrderError(f"{path} is missing: run `evaluate` first")
    return json.loads(path.read_text())
