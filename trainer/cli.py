"""Command line: `python -m trainer STAGE --config FILE [overrides]`.

Stages: prepare, train, evaluate, export, push, run (all of them), deploy (retry a version's route change),
list (versions), schema (config docs).
A user mistake prints one `error:` line and exits 2; Ctrl-C during training leaves a checkpoint to resume.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from trainer.config import RunConfig, load_config, parse_set_option
from trainer.errors import TrainerError

STAGES = ("prepare", "train", "evaluate", "export", "push", "run", "deploy")
HELP = {
    "prepare": "validate the JSONL data, report bad rows, dedupe, split train/eval",
    "train": "LoRA fine-tuning (Unsloth on CUDA when installed, else PEFT); resumes from checkpoints",
    "evaluate": "held-out loss, perplexity and task checks for base and tuned model; the gate",
    "export": "merge, convert to GGUF with llama.cpp, quantise, write Modelfiles",
    "push": "register the GGUF with Ollama as NAME:vN and NAME:latest, or as a canary on the `deploy` route "
    "(only if the gate passed)",
    "run": "prepare, train, evaluate, export and push",
    "deploy": "put a pushed version (default: the newest) on the `deploy` route as a canary (with evaluation.baseline "
    "route:NAME only if it beats the deployed version through the gateway)",
    "list": "show the pushed versions",
}

# CLI flag -> dotted config key, for the fields people change most.
OVERRIDES = {
    "base_model": ("base_model.source", str, "base model (hub id, folder, .gguf or pkg://PKG/FILE)"),
    "data": ("data.paths", str, "JSONL data file (repeat for several)"),
    "output_dir": ("output_dir", str, "output folder"),
    "max_steps": ("training.max_steps", int, "optimizer steps"),
    "epochs": ("training.epochs", float, "epochs (when max_steps is not set)"),
    "learning_rate": ("training.learning_rate", float, "peak learning rate"),
    "batch_size": ("training.batch_size", int, "micro-batch size"),
    "seed": ("training.seed", int, "random seed"),
    "backend": ("training.backend", str, "auto, peft or unsloth"),
    "ollama_host": ("ollama.host", str, "Ollama API URL"),
    "ollama_model": ("ollama.model", str, "model name in Ollama"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer", description="LoRA fine-tuning -> eval gate -> GGUF -> Ollama.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in (*STAGES, "list"):
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        p.add_argument("--config", required=True, type=Path, help="run config (YAML)")
        p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        if name == "list":
            continue
        for flag, (_, typ, help_text) in OVERRIDES.items():
            p.add_argument(
                f"--{flag.replace('_', '-')}",
                dest=flag,
                type=typ,
                help=help_text,
                action="append" if flag == "data" else "store",
            )
        p.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="any config field, e.g. --set lora.r=8 (value read as YAML)",
        )
        if name in ("push", "run"):
            p.add_argument("--force", action="store_true", help="push (and deploy) even if an eval gate failed")
        if name == "deploy":
            p.add_argument("--version", type=int, help="pushed version N to deploy (default: the newest)")
            p.add_argument(
                "--force",
                action="store_true",
                help="deploy without comparing with the route's deployed version (evaluation.baseline)",
            )
    sub.add_parser("schema", help="print every config field with its description")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, (dotted, _, _) in OVERRIDES.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        # Paths typed on the command line are relative to the shell, not to the YAML file.
        if flag == "data":
            value = [str(Path(v).resolve()) for v in value]
        elif flag == "output_dir" or (flag == "base_model" and Path(value).exists()):
            value = str(Path(value).resolve())
        out[dotted] = value
    for item in getattr(args, "sets", []):
        key, value = parse_set_option(item)
        out[key] = value
    return out


def _dispatch(args: argparse.Namespace, cfg: RunConfig) -> Any:
    from trainer import stages

    if args.command == "list":
        from trainer.manifest import format_versions, list_versions

        return format_versions(list_versions(cfg.output_dir))
    if args.command == "push":
        return stages.push_stage(cfg, force=args.force)
    if args.command == "run":
        return stages.run_all(cfg, force=args.force)
    if args.command == "deploy":
        return stages.deploy_stage(cfg, version=args.version, force=args.force)
    return getattr(stages, f"{args.command}_stage")(cfg)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dataset"]:  # rows from production traffic; no run config (trainer/dataset.py)
        from trainer.dataset import main as dataset_main

        return dataset_main(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "schema":
            print(json.dumps(RunConfig.model_json_schema(), indent=2))
            return 0
        cfg = load_config(args.config, _overrides(args) if args.command != "list" else None)
        if args.command in ("train", "run"):
            from trainer.backends import import_backend_first

            import_backend_first(cfg)
        result = _dispatch(args, cfg)
    except TrainerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume from the last checkpoint", file=sys.stderr)
        return 130
    if isinstance(result, str):
        print(result)
    else:
        print(json.dumps(_brief(result), indent=2, default=str))
    return 0


def _brief(result: Any) -> Any:
    """Stage results without the long per-example lists (those are in the report files)."""
    if isinstance(result, dict):
        return {k: _brief(v) for k, v in result.items() if k not in ("examples", "bad_rows")}
    return result
