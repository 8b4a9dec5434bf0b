"""The new version against the deployed one, through the serving stack (`evaluation.baseline: route:NAME`).

After push, NAME:vN is served like any model; the route's stable (first) variant is what users get now.
Both answer the same held-out rows (OUTPUT/data/eval.jsonl, the first `evaluation.max_examples`) through
the gateway: greedy (temperature 0), the served GGUF files (quantisation included), the variant's own
sampling params and adapter. Each is called by its served model name, not through the route, so these
requests neither count in the route guard's canary statistics nor land in the route's captured traffic.

The same task checks score both; the gate passes when the new version's primary check beats the deployed
variant's by more than `gate.deployed_min_score_gain`. Writes OUTPUT/eval/deployed.json.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.checks import run_checks
from trainer.config import RunConfig
from trainer.data import read_prepared
from trainer.deploy import GatewayAdmin, admin_key, wait_for_model
from trainer.encoding import reference_answer
from trainer.errors import DeployError, StageOrderError

log = logging.getLogger(__name__)


@dataclass
class ServedScores:
    model: str
    scores: dict[str, float]


@dataclass
class DeployedGate:
    passed: bool
    reasons: list[str] = field(default_factory=list)


def served_answer(
    admin: GatewayAdmin, model: str, messages: list[dict[str, str]], params: dict[str, Any], max_tokens: int
) -> tuple[str, bool]:
    """(text, stopped on its own) of one greedy answer through the gateway."""
    body = {**params, "model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens, "stream": False}
    answer = admin.chat(body)
    try:
        choice = answer["choices"][0]
        return choice["message"].get("content") or "", choice.get("finish_reason") == "stop"
    except (IndexError, KeyError, TypeError, AttributeError):
        raise DeployError(f"the gateway answered {model} without a chat completion: {str(answer)[:200]}") from None


def gate_vs_deployed(deployed: ServedScores, new: ServedScores, margin: float, primary: str) -> DeployedGate:
    d, n = deployed.scores[primary], new.scores[primary]
    if n - d > margin:
        return DeployedGate(passed=True)
    return DeployedGate(
        passed=False,
        reasons=[
            f"{primary} through the gateway: {new.model} {n:.3f} does not beat the deployed {deployed.model} {d:.3f} "
            f"by more than {margin} (gate.deployed_min_score_gain)"
        ],
    )


def _score(rows: list[dict[str, Any]], key: str, checks: Sequence[str]) -> dict[str, float]:
    return {c: round(sum(r[key]["checks"][c] for r in rows) / len(rows), 4) for c in checks}


def compare_with_deployed(cfg: RunConfig, model: str) -> dict[str, Any]:
    """Score `model` (just pushed) and the route's deployed variant on the held-out rows; the gate."""
    route, ev = cfg.evaluation.baseline_route, cfg.evaluation
    assert route is not None and cfg.deploy is not None  # the config validator makes sure
    held_file = cfg.output_dir / "data" / "eval.jsonl"
    if not held_file.exists():
        raise StageOrderError(f"{held_file} is missing: run `prepare` first")
    held = read_prepared(held_file)[: ev.max_examples]
    if not held:
        raise StageOrderError(f"{held_file} has no rows: run `prepare` again")
    checks = list(ev.checks)
    with GatewayAdmin(cfg.deploy, admin_key(cfg.deploy)) as admin:
        stable = admin.stable_variant(route)
        served = stable.get("adapter") or stable["model"]
        params = dict(stable.get("params") or {})
        wait_for_model(admin, model, cfg.deploy.model_wait_s)
        rows = []
        for messages in held:
            prompt, reference = messages[:-1], reference_answer(messages)
            row: dict[str, Any] = {"prompt": prompt[-1]["content"], "reference": reference}
            for key, name in (("deployed", served), ("new", model)):
                text, stopped = served_answer(admin, name, prompt, params, ev.max_new_tokens)
                row[key] = {
                    "output": text,
                    "checks": run_checks(
                        checks, output=text, reference=reference, stopped_on_eos=stopped, schema=ev.json_schema
                    ),
                }
            rows.append(row)
    deployed = ServedScores(served, _score(rows, "deployed", checks))
    new = ServedScores(model, _score(rows, "new", checks))
    gate = gate_vs_deployed(deployed, new, cfg.gate.deployed_min_score_gain, ev.primary_check)
    report = {
        "route": route,
        "gateway_url": cfg.deploy.gateway_url,
        "rows": len(rows),
        "params": params,
        "primary_check": ev.primary_check,
        "margin": cfg.gate.deployed_min_score_gain,
        "deployed": asdict(deployed),
        "new": asdict(new),
        "gate": asdict(gate),
        "examples": rows,
    }
    out = cfg.output_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "deployed.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    log.info(
        "vs deployed on route %s (%d held-out rows through the gateway): %s %s, %s %s: gate %s",
        route,
        len(rows),
        served,
        deployed.scores,
        model,
        new.scores,
        "passed" if gate.passed else "FAILED",
    )
    return report
