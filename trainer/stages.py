"""The stages as functions of a validated config: prepare, train, evaluate, export, push, and run (all).

Each stage reads what the previous one left in the output folder, so any stage can be re-run alone:

    OUTPUT/data/{train,eval}.jsonl, prepare_report.json   prepare
    OUTPUT/checkpoints/step-N/, adapter/, train_log.jsonl  train
    OUTPUT/eval/report.json, summary.md                    evaluate
    OUTPUT/export/*.gguf, Modelfile, export.json           export
    OUTPUT/versions/vN/manifest.json                       push (and deploy, which retries a route change)
"""

from __future__ import annotations

import json
import logging
from typing import Any

from trainer.config import RunConfig
from trainer.errors import ConfigError, GateRefused, StageOrderError

log = logging.getLogger(__name__)


def prepare_stage(cfg: RunConfig) -> dict[str, Any]:
    from trainer.base_model import load_tokenizer, resolve_source
    from trainer.data import prepare, write_jsonl

    source = resolve_source(cfg.base_model.source)
    train_rows, eval_rows, report = prepare(
        cfg.data, lambda: load_tokenizer(source, cfg.base_model.chat_template), cfg.training.seed
    )
    out = cfg.output_dir / "data"
    write_jsonl(out / "train.jsonl", train_rows)
    write_jsonl(out / "eval.jsonl", eval_rows)
    (out / "prepare_report.json").write_text(json.dumps(report.to_json(), indent=2))
    for bad in report.bad_rows:
        log.warning("skipped %s", bad)
    log.info(
        "prepared %d train / %d eval rows (%d read, %d bad, %d duplicates); tokens %s",
        report.train,
        report.eval,
        report.rows_read,
        len(report.bad_rows),
        report.duplicates,
        report.token_stats,
    )
    return report.to_json()


def train_stage(cfg: RunConfig) -> dict[str, Any]:
    from dataclasses import asdict

    from trainer.train import train

    return asdict(train(cfg))


def evaluate_stage(cfg: RunConfig) -> dict[str, Any]:
    from trainer.evaluate import evaluate

    return evaluate(cfg)


def export_stage(cfg: RunConfig) -> dict[str, Any]:
    from trainer.export import export

    return export(cfg)


def push_stage(cfg: RunConfig, *, force: bool = False) -> dict[str, Any]:
    from trainer.evaluate import load_report
    from trainer.push import push

    report = load_report(cfg.output_dir)
    if not report["gate"]["passed"]:
        reasons = "; ".join(report["gate"]["reasons"])
        if not force:
            raise GateRefused(
                f"not pushing: the tuned model did not beat the base model ({reasons}); use --force to push anyway"
            )
        log.warning("pushing a model that failed the gate because --force was given: %s", reasons)
    return push(cfg, report, force=force)


def deploy_stage(cfg: RunConfig, *, version: int | None = None, force: bool = False) -> dict[str, Any]:
    """Put an already pushed version (default: the newest) on the configured route; records it in its manifest.
    With evaluation.baseline route:NAME it is compared with the route's deployed variant first (afresh: the
    route may have changed since push), unless `force`."""
    from trainer.deploy import deploy_version
    from trainer.manifest import list_versions, versions_dir, write_manifest
    from trainer.ollama_replicas import OllamaVersion, ensure_on_replicas, with_retries
    from trainer.push import checked_against_deployed

    if cfg.deploy is None:
        raise ConfigError("deploy needs a `deploy` section in the config (route, canary_percent, steps, ...)")
    manifests = {m["version"]: m for m in list_versions(cfg.output_dir)}
    if not manifests:
        raise StageOrderError(f"no version pushed yet under {cfg.output_dir}: run `push` first")
    chosen = max(manifests) if version is None else version
    if chosen not in manifests:
        raise StageOrderError(
            f"version v{chosen} was never pushed; pushed: {', '.join(f'v{v}' for v in sorted(manifests))}"
        )
    manifest = manifests[chosen]
    tag = manifest["ollama"]["tag"]
    if not tag:
        raise StageOrderError(f"v{chosen} was not pushed to Ollama (push.targets): there is no NAME:vN to deploy")
    if cfg.evaluation.baseline_route and not force:
        manifest["vs_deployed"], refusal = checked_against_deployed(cfg, tag, force=False)
        if refusal:
            write_manifest(cfg.output_dir, chosen, manifest)
            raise GateRefused(f"{refusal}; `--force` deploys v{chosen} anyway")
    elif force and manifest.get("vs_deployed") and not manifest["vs_deployed"]["gate"]["passed"]:
        manifest["vs_deployed"]["forced"] = True  # shipped although it lost at push
    record = manifest["ollama"].get("registry")
    if record:  # every replica has the version before the route sends traffic to it
        o = cfg.ollama
        kept = OllamaVersion.from_record(versions_dir(cfg.output_dir) / f"v{chosen}", chosen, record)
        retry = lambda call, what: with_retries(call, what=what, retries=o.retries, backoff_s=o.retry_backoff_s)
        manifest["ollama"]["replicas"] = ensure_on_replicas(o.host, o.dns_servers, kept, retry, timeout_s=o.timeout_s)
    manifest["deploy"] = deploy_version(cfg.deploy, tag)
    write_manifest(cfg.output_dir, chosen, manifest)
    return manifest["deploy"]


def run_all(cfg: RunConfig, *, force: bool = False) -> dict[str, Any]:
    """Every stage in order; a failed gate stops before push unless forced."""
    results = {"prepare": prepare_stage(cfg), "train": train_stage(cfg), "evaluate": evaluate_stage(cfg)}
    if not results["evaluate"]["gate"]["passed"] and not force:
        reasons = "; ".join(results["evaluate"]["gate"]["reasons"])
        raise GateRefused(
            f"stopping before export: the tuned model did not beat the base model ({reasons}); "
            f"see {cfg.output_dir / 'eval' / 'summary.md'}, or use --force"
        )
    results["export"] = export_stage(cfg)
    results["push"] = push_stage(cfg, force=force)
    return results
