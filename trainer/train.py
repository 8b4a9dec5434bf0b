"""The train stage: a plain LoRA training loop, readable top to bottom.

Order of micro-batches is a pure function of (seed, epoch), so a run interrupted at step k and resumed
from its checkpoint sees exactly the batches it would have seen. Checkpoints hold the adapter weights,
the optimizer, the LR schedule and the RNG state, and are written to a temporary folder first and
renamed, so a crash mid-write never leaves a checkpoint that looks complete.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from trainer.backends import Capabilities, adapter_dir, build_lora_model
from trainer.config import RunConfig
from trainer.data import read_prepared
from trainer.encoding import IGNORE, Encoded, encode_conversation
from trainer.errors import StageOrderError
from trainer.loss import assistant_loss_sum

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 2


@dataclass
class TrainSummary:
    backend: str
    device: str
    steps: int
    resumed_from: int
    examples: int
    tokens_seen: int
    trained_tokens: int
    wall_s: float
    tokens_per_s: float
    first_loss: float | None
    last_loss: float | None
    peak_gpu_gib: float | None


def micro_batch_order(n_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Index lists of one epoch's micro-batches, shuffled deterministically by (seed, epoch)."""
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n_examples, batch_size)]


def micro_batches_for_step(step: int, n_examples: int, cfg: RunConfig) -> list[list[int]]:
    """The micro-batches of optimizer step `step` (0-based) in the endless stream of epochs."""
    t = cfg.training
    per_epoch = math.ceil(n_examples / t.batch_size)
    out = []
    for k in range(step * t.gradient_accumulation_steps, (step + 1) * t.gradient_accumulation_steps):
        epoch, index = divmod(k, per_epoch)
        out.append(micro_batch_order(n_examples, t.batch_size, t.seed, epoch)[index])
    return out


def total_steps(n_examples: int, cfg: RunConfig) -> int:
    t = cfg.training
    if t.max_steps:
        return t.max_steps
    per_epoch = math.ceil(n_examples / t.batch_size)
    return max(1, math.ceil(t.epochs * per_epoch / t.gradient_accumulation_steps))


def collate(batch: list[Encoded], pad_id: int, device: str) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; padding is masked from attention and from the loss."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _checkpoints(root: Path) -> list[Path]:
    return sorted(root.glob("step-*[0-9]"), key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    root: Path,
    step: int,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    digest: str,
) -> Path:
    import torch
    from peft import get_peft_model_state_dict

    target = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(
        {
            "step": step,
            "digest": digest,
            "adapter": get_peft_model_state_dict(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp / "state.pt",
    )
    shutil.rmtree(target, ignore_errors=True)  # a stale checkpoint of an earlier run with another config
    tmp.rename(target)
    for old in _checkpoints(root)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_latest_checkpoint(
    root: Path,
    digest: str,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Restore the newest checkpoint of this exact config; return the number of steps it had done (0 if none)."""
    import torch
    from peft import set_peft_model_state_dict

    for ckpt in reversed(_checkpoints(root)):
        state = torch.load(ckpt / "state.pt", weights_only=False, map_location="cpu")
        if state["digest"] != digest:
            log.warning("ignoring checkpoint %s: it was made with a different config or data", ckpt)
            continue
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resuming from %s", ckpt)
        return state["step"]
    return 0


def _accumulate_gradients(
    model: PeftModel, examples: list[Encoded], step: int, cfg: RunConfig, pad_id: int, device: str, *, fused_loss: bool
) -> tuple[float, int, int]:
    """Forward and backward over one optimizer step's micro-batches: (loss, tokens seen, tokens trained)."""
    step_loss, seen, trained = 0.0, 0, 0
    for indices in micro_batches_for_step(step, len(examples), cfg):
        batch = collate([examples[i] for i in indices], pad_id, device)
        if fused_loss:  # Unsloth's patched forward computes its own fused cross-entropy
            loss = model(**batch).loss
        else:
            loss_sum, n = assistant_loss_sum(model, batch)
            loss = loss_sum / max(n, 1)
        loss = loss / cfg.training.gradient_accumulation_steps
        loss.backward()
        step_loss += loss.item()
        seen += int(batch["attention_mask"].sum())
        trained += int((batch["labels"] != IGNORE).sum())
    return step_loss, seen, trained


def train(cfg: RunConfig, *, caps: Capabilities | None = None, stop_after: int | None = None) -> TrainSummary:
    """Train LoRA adapters on the prepared split and save them to OUTPUT/adapter.

    `stop_after` ends the loop early after that many steps as if interrupted (used to test resuming).
    """
    import torch
    from transformers import get_linear_schedule_with_warmup

    train_file = cfg.output_dir / "data" / "train.jsonl"
    if not train_file.exists():
        raise StageOrderError(f"{train_file} is missing: run `prepare` first")
    model, tok, backend, device = build_lora_model(cfg, caps)
    examples = [encode_conversation(tok, m) for m in read_prepared(train_file)]
    steps = total_steps(len(examples), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.training.learning_rate, weight_decay=cfg.training.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.training.warmup_steps, steps)
    ckpt_root, digest = cfg.output_dir / "checkpoints", cfg.digest() + ":" + _file_digest(train_file)
    start = load_latest_checkpoint(ckpt_root, digest, model, optimizer, scheduler)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    model.train()
    log_path = cfg.output_dir / "train_log.jsonl"
    if start == 0:
        log_path.unlink(missing_ok=True)
    seen = trained = 0
    losses: list[float] = []
    began = time.perf_counter()
    end = min(steps, stop_after) if stop_after else steps
    bar = tqdm(range(start, end), initial=start, total=steps, desc=f"train ({backend})", unit="step")
    for step in bar:
        step_loss, n_seen, n_trained = _accumulate_gradients(
            model, examples, step, cfg, tok.pad_token_id, device, fused_loss=backend == "unsloth"
        )
        seen += n_seen
        trained += n_trained
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        if (step + 1) % cfg.training.logging_steps == 0:
            _append_log(
                log_path,
                step=step + 1,
                loss=round(step_loss, 6),
                lr=scheduler.get_last_lr()[0],
                elapsed_s=round(time.perf_counter() - began, 3),
            )
        if (step + 1) % cfg.training.save_steps == 0 or step + 1 == end:
            save_checkpoint(ckpt_root, step + 1, model, optimizer, scheduler, digest)
    wall = time.perf_counter() - began
    if end == steps:
        model.save_pretrained(str(adapter_dir(cfg.output_dir)))
        tok.save_pretrained(adapter_dir(cfg.output_dir))
    summary = TrainSummary(
        backend=backend,
        device=device,
        steps=end,
        resumed_from=start,
        examples=len(examples),
        tokens_seen=seen,
        trained_tokens=trained,
        wall_s=round(wall, 2),
        tokens_per_s=round(seen / wall, 1) if wall else 0.0,
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
        peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
    )
    (cfg.output_dir / "train_summary.json").write_text(json.dumps(asdict(summary), indent=2))
    log.info(
        "trained %d steps in %.1fs: %.0f tokens/s, loss %s -> %s",
        end - start,
        wall,
        summary.tokens_per_s,
        summary.first_loss,
        summary.last_loss,
    )
    return summary


def _append_log(path: Path, **entry: float) -> None:
    with path.open("a") as f:
        f.write(json.dumps(entry) + "\n")


def _file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
