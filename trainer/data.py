"""The prepare stage: read JSONL, report every bad row with its line number, dedupe, split, count tokens.

Three row formats are accepted and normalised to chat messages:
  {"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}
  {"prompt": ..., "completion": ...}
  {"instruction": ..., "input": ... (optional), "output": ...}      (alpaca)
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from gateway.protocol.training_rows import chat_messages, text_field
from trainer.config import DataConfig
from trainer.encoding import Messages, encode_conversation
from trainer.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class BadRow:
    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class PrepareReport:
    rows_read: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    duplicates: int = 0
    heldout_overlap: int = 0  # training rows dropped because a held-out row (data.eval_paths) has their prompt
    train: int = 0
    eval: int = 0
    data_sha256: str = ""
    token_stats: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["bad_rows"] = [str(b) for b in self.bad_rows]
        return out


def _from_messages(row: dict[str, Any]) -> Messages:
    return chat_messages(row["messages"])


def _from_prompt_completion(row: dict[str, Any]) -> Messages:
    return [
        {"role": "user", "content": text_field(row.get("prompt"), "prompt")},
        {"role": "assistant", "content": text_field(row.get("completion"), "completion")},
    ]


def _from_alpaca(row: dict[str, Any]) -> Messages:
    instruction = text_field(row.get("instruction"), "instruction")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise ValueError("field 'input' must be a string")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": text_field(row.get("output"), "output")},
    ]


FORMATS = {
    "messages": (_from_messages, ("messages",)),
    "prompt_completion": (_from_prompt_completion, ("prompt", "completion")),
    "alpaca": (_from_alpaca, ("instruction", "output")),
}


def row_to_messages(row: Any, fmt: str, system_prompt: str | None) -> Messages:
    """Normalise one parsed row; raises ValueError with the reason when the row is unusable."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    if fmt == "auto":
        fmt = next((name for name, (_, keys) in FORMATS.items() if keys[0] in row), "")
        if not fmt:
            raise ValueError(
                "unknown row format: expected 'messages', 'prompt'/'completion' or 'instruction'/'output' fields"
            )
    convert, required = FORMATS[fmt]
    missing = [k for k in required if k not in row]
    if missing:
        raise ValueError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}")
    messages = convert(row)
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


@dataclass(frozen=True)
class Row:
    """A valid example and the line it came from, so later checks (length) can still name it."""

    file: str
    line: int
    messages: Messages


def read_rows(paths: list[Path], fmt: str, system_prompt: str | None, report: PrepareReport) -> list[Row]:
    """Parse every file; good rows are returned, bad ones are recorded in the report with their line."""
    rows: list[Row] = []
    digest = hashlib.sha256()
    for path in paths:
        if not path.is_file():
            raise DataError(f"data file not found: {path}")
        raw = path.read_bytes()
        digest.update(raw)
        for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            report.rows_read += 1
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError as exc:
                report.bad_rows.append(BadRow(path.name, lineno, f"bad JSON: {exc.msg} at column {exc.colno}"))
                continue
            try:
                rows.append(Row(path.name, lineno, row_to_messages(parsed, fmt, system_prompt)))
            except ValueError as exc:
                report.bad_rows.append(BadRow(path.name, lineno, str(exc)))
    report.data_sha256 = digest.hexdigest()
    return rows


def _stats(lengths: list[int]) -> dict[str, float]:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return {
        "count": len(s),
        "min": s[0],
        "mean": round(sum(s) / len(s), 1),
        "p50": pick(0.5),
        "p95": pick(0.95),
        "max": s[-1],
        "total": sum(s),
    }


def _all_invalid(report: PrepareReport) -> DataError:
    return DataError(
        f"all {report.rows_read} rows are invalid; first problems:\n  "
        + "\n  ".join(str(b) for b in report.bad_rows[:10])
    )


def split_indices(n: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic split: the same rows and seed always give the same held-out set."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(n * eval_fraction))
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def _prompt_key(messages: Messages) -> str:
    return json.dumps(messages[:-1], sort_keys=True)


def _keep(
    rows: list[Row], cfg: DataConfig, tok: PreTrainedTokenizerBase, report: PrepareReport, seen: set[str]
) -> tuple[list[Messages], list[int]]:
    """Rows that are not duplicates (of each other or of `seen`) and fit max_seq_length, with their lengths."""
    kept: list[Messages] = []
    lengths: list[int] = []
    for row in tqdm(rows, desc="prepare", unit="row", leave=False):
        key = json.dumps(row.messages, sort_keys=True)
        if cfg.dedupe and key in seen:
            report.duplicates += 1
            continue
        seen.add(key)
        n_tokens = len(encode_conversation(tok, row.messages).input_ids)
        if n_tokens > cfg.max_seq_length:
            report.bad_rows.append(
                BadRow(row.file, row.line, f"{n_tokens} tokens, over max_seq_length {cfg.max_seq_length}")
            )
            continue
        kept.append(row.messages)
        lengths.append(n_tokens)
    return kept, lengths


def prepare(
    cfg: DataConfig, load_tok: Callable[[], PreTrainedTokenizerBase], seed: int
) -> tuple[list[Messages], list[Messages], PrepareReport]:
    """Validate, dedupe, length-check and split; raise DataError when nothing usable is left.

    The held-out rows are a seeded random share of `paths`, or the rows of `eval_paths` when given
    (training rows asking a held-out prompt are then dropped). The tokenizer is loaded (`load_tok`)
    only once there are valid rows, so bad data fails fast.
    """
    report = PrepareReport()
    rows = read_rows(cfg.paths, cfg.format, cfg.system_prompt, report)
    digest = report.data_sha256
    held_rows = read_rows(cfg.eval_paths, cfg.format, cfg.system_prompt, report) if cfg.eval_paths else []
    if cfg.eval_paths:  # both files decide what is trained and measured
        report.data_sha256 = hashlib.sha256((digest + report.data_sha256).encode()).hexdigest()
    if report.rows_read == 0:
        raise DataError(f"no examples found in {', '.join(map(str, [*cfg.paths, *cfg.eval_paths]))}: the data is empty")
    if not rows:
        raise _all_invalid(report)
    tok = load_tok()
    seen: set[str] = set()
    held, held_lengths = _keep(held_rows, cfg, tok, report, seen)
    kept, lengths = _keep(rows, cfg, tok, report, seen)
    if cfg.eval_paths:
        held_prompts = {_prompt_key(m) for m in held}
        train_idx = [i for i, m in enumerate(kept) if _prompt_key(m) not in held_prompts]
        report.heldout_overlap = len(kept) - len(train_idx)
        kept, lengths = kept + held, lengths + held_lengths
        eval_idx = list(range(len(kept) - len(held), len(kept)))
    elif not kept:
        raise _all_invalid(report)
    else:
        train_idx, eval_idx = split_indices(len(kept), cfg.eval_fraction, seed)
    if len(eval_idx) < cfg.min_eval_examples or not train_idx:
        raise DataError(
            f"only {len(kept)} valid rows: {len(eval_idx)} held out (min_eval_examples is "
            f"{cfg.min_eval_examples}) and {len(train_idx)} to train on; add more data"
        )
    report.train, report.eval = len(train_idx), len(eval_idx)
    report.token_stats = {
        "train": _stats([lengths[i] for i in train_idx]),
        "eval": _stats([lengths[i] for i in eval_idx]),
    }
    return [kept[i] for i in train_idx], [kept[i] for i in eval_idx], report


def write_jsonl(path: Path, rows: list[Messages]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps({"messages": r}, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(path)


def read_prepared(path: Path) -> list[Messages]:
    return [json.loads(line)["messages"] for line in path.read_text().splitlines() if line.strip()]
